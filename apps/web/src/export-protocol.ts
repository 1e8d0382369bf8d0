/** Messages between the page and the export worker. */
export interface ExportRequest {
  files: File[];
  target: "qcow2" | "raw";
  compressed: boolean;
  /** Name of the file in the origin's private file system that receives the image. */
  scratchName: string;
}

export type ExportReply =
  | { type: "progress"; percent: number }
  | { type: "done"; bytes: number }
  | { type: "error"; message: string };
