export { loadCases, parseCaseFile, CaseFileError, type CaseDefinition, type CaseStep } from "./case-file";
export { main, parseArgs, makeDriver, PACKAGE_CASES_DIR, PACKAGE_GOLDEN_DIR } from "./cli";
export { unifiedDiff } from "./diff";
export {
  customDriver,
  qcowkitDriver,
  qemuDriver,
  findProgram,
  programNamePairs,
  DriverError,
  NEUTRAL_NAMES,
  type Driver,
  type ToolCommand,
  type ToolRole,
} from "./drivers";
export {
  applyPipeFilter,
  filterDates,
  filterDiskSize,
  filterJson,
  filterOutput,
  filterProgramNames,
  filterTestDir,
  filterTimings,
  filterVersion,
  type FilterContext,
} from "./filters";
export { runCase, validateCase, DEFAULT_TIMEOUTS, type CaseRunOptions, type CaseTimeouts } from "./run-case";
export {
  formatResult,
  formatSummary,
  goldenPath,
  runSuite,
  selectCases,
  type CaseResult,
  type CaseStatus,
  type SuiteOptions,
  type SuiteResult,
} from "./suite";
