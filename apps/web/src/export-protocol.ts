/** Messages between the page and the export worker. */
export interface ExportRequest {
  /** The image and the files it names (local files), or */
  files?: File[];
  /** the URL of a remote image. */
  url?: string;
  target: "qcow2" | "raw";
  compressed: boolean;
  /** Name of the file in the origin's private file system that receives the image. */
  scratchName: string;
}

export type ExportReply =
  | { type: "progress"; percent: number }
  | { type: "done"; bytes: number }
  | { type: "error"; message: string };
