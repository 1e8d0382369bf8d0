/** A zstd frame of RLE blocks decoding to `total` bytes of `byte`; `declared`: the content size in its header (undefined: none). */
export declare function zstdRleFrame(total: number, opts?: { declared?: number | undefined; byte?: number }): Uint8Array;
/** A raw deflate stream of `total` zero bytes at deflate's highest ratio. */
export declare function deflateZeros(total: number): Uint8Array;
/** The largest `deflateZeros` total whose stream fits in `bytes`. */
export declare function deflateZerosFitting(bytes: number): number;
/** Point guest clusters of a qcow2 image at compressed payloads appended to the file. */
export declare function plantCompressed(path: string, payloads: Array<[guestOffset: number, payload: Uint8Array]>): void;
export interface BombImage {
  name: string;
  path: string;
  size: number;
  expect: "ok" | "error";
}
export declare function buildBombImages(dir: string, opts?: { clusters?: number }): BombImage[];
export interface AttackRow {
  image: string;
  tool: string;
  ours: boolean;
  code: number | null | "timeout";
  message: string;
  rssMB: number;
  seconds: number;
}
export declare function runImageAttacks(opts?: {
  limitMB?: number;
  timeoutMs?: number;
  log?: (line: string) => void;
  dir?: string;
}): Promise<{ rows: AttackRow[]; over: AttackRow[]; differ: string[]; maxOursMB: number }>;
