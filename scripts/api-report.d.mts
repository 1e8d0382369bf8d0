export interface ApiEntry {
  /** File name under api/. */
  report: string;
  /** The import specifier, e.g. "@qcowkit/core/node". */
  name: string;
  /** The built declaration file. */
  dts: string;
}
export function apiEntries(): ApiEntry[];
export function apiReport(entry: ApiEntry): string;
