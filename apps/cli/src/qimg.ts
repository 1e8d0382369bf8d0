import { runBin } from "./cli/output";
import { runQimg } from "./qimg/main";

runBin(runQimg);
