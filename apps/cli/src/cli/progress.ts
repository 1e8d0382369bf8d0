/**
 * qemu-img's -p progress line (util/qemu-progress.c with the simple printer): "    (NN.NN/100%)\r" on
 * stdout whenever the value moved by more than `minSkip` percent or is 0 or 100, and a newline at the end.
 */
import { printfFixed2 } from "@qcowkit/core/internal";
import type { Output } from "./errors";

export class Progress {
  private current = 0;
  private lastPrint = 0;
  /** Text qemu-img has written to its buffered stdout since the last flush; a progress line flushes it. */
  private unflushed = "";

  constructor(
    private readonly io: Output,
    readonly enabled: boolean,
    private readonly minSkip = 1.0,
  ) {}

  /** qemu_progress_print(delta, max): max 0 sets the value, otherwise adds delta% of max. */
  print(delta: number, max = 0): void {
    if (!this.enabled) return;
    // QEMU keeps the value in a C float.
    let current = max === 0 ? Math.fround(delta) : Math.fround(this.current + Math.fround(Math.fround(delta / 100) * max));
    if (current > 100) current = 100;
    this.current = current;
    if (current > this.lastPrint + this.minSkip || current < this.lastPrint - this.minSkip || current === 0 || current === 100) {
      this.lastPrint = current;
      this.io.out(`${this.unflushed}    (${printfFixed2(current)}/100%)\r`);
      this.unflushed = "";
    }
  }

  /** Stdout text that goes out with the next progress line (as qemu-img's buffered stdout would). */
  hold(text: string): void {
    this.unflushed += text;
  }

  /** The held text that no progress line has sent yet; it is forgotten here. */
  takeHeld(): string {
    const text = this.unflushed;
    this.unflushed = "";
    return text;
  }

  /** A `done` of `total` status callback. */
  status(done: number, total: number): void {
    this.print(total > 0 ? (100 * done) / total : 0);
  }

  end(): void {
    if (this.enabled) this.io.out("\n");
  }
}
