import { project } from "../../vitest.shared";

export default project("web", { testTimeout: 120_000 });
