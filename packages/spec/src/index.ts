export * from "./errors";
export * from "./byte-store";
