/** Types of remote-servers.mjs (real servers for remote-image tests and benchmarks, loopback only). */
export interface RunningServer {
  url: string;
  port: number;
  stop(): Promise<void>;
}
export interface TestCa {
  ca: string;
  cert: string;
  key: string;
}
export function freePort(): Promise<number>;
export function makeTestCa(dir: string): TestCa;
export function startNginx(root: string, opts?: { tls?: { cert: string; key: string } }): Promise<RunningServer>;
export function startS3rver(
  dir: string,
  buckets?: string[],
): Promise<{ endpoint: string; env: Record<string, string>; stop(): Promise<void> }>;
