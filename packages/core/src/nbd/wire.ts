/**
 * One connection to an NBD server: the transport, the bytes received so far, and a watchdog. While the client
 * waits for the server (a handshake step, or requests in flight), a server that sends nothing for
 * `timeoutMs` is given up on: the connection fails and every waiter gets a one-line error instead of a hang.
 */
import { ByteQueue } from "@qcowkit/nbd-protocol";
import type { NbdTransport } from "./transport";

/** How a stream that ended without an error reads (QEMU's wording). */
export const END_OF_FILE = "Unexpected end-of-file before all data were read";

export class NbdWire {
  readonly input = new ByteQueue();
  private lastActivity = Date.now();
  private waiting = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private ended = false;

  constructor(
    readonly transport: NbdTransport,
    /** Idle time (ms) after which a silent server is given up on; 0 waits forever. */
    readonly timeoutMs: number,
  ) {
    transport.start({
      data: (chunk) => {
        this.lastActivity = Date.now();
        this.input.push(chunk);
      },
      end: (error) => this.fail(error ?? new Error(END_OF_FILE)),
    });
  }

  /** True once the connection failed or was closed. */
  get closed(): boolean {
    return this.ended;
  }

  send(data: Uint8Array): void {
    if (!this.ended) this.transport.send(data);
  }

  /** Count one more (or one fewer) party waiting for the server; the watchdog runs while any is. */
  expect(delta: 1 | -1): void {
    this.waiting += delta;
    if (this.waiting === 0) {
      if (this.timer !== undefined) clearTimeout(this.timer);
      this.timer = undefined;
    } else if (delta === 1 && this.waiting === 1) {
      this.lastActivity = Date.now();
      this.arm(this.timeoutMs);
    }
  }

  /** The next `n` bytes (a view or a copy), waiting for them under the watchdog. */
  async read(n: number): Promise<Uint8Array> {
    if (this.input.length < n) {
      this.expect(1);
      try {
        await this.input.need(n);
      } finally {
        this.expect(-1);
      }
    }
    return this.input.take(n);
  }

  /** Fail the connection: waiters get `error`, the transport is torn down. */
  fail(error: Error): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.input.fail(error);
    if (!this.ended) {
      this.ended = true;
      this.transport.destroy();
    }
  }

  /** Close after sending what is queued; resolves once the transport is closed. */
  async end(): Promise<void> {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.ended) {
      this.ended = true;
      this.input.fail(new Error("Connection closed"));
      await this.transport.end();
    }
  }

  private arm(ms: number): void {
    if (this.timeoutMs <= 0 || this.ended) return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.waiting === 0 || this.ended) return;
      const idle = Date.now() - this.lastActivity;
      if (idle >= this.timeoutMs) {
        this.fail(new Error(`No reply from the NBD server within ${formatSeconds(this.timeoutMs)}`));
      } else {
        this.arm(this.timeoutMs - idle);
      }
    }, ms);
  }
}

function formatSeconds(ms: number): string {
  const s = ms / 1000;
  return `${Number.isInteger(s) ? s : s.toFixed(1)} s`;
}
