import { blockBufferedOutput, runBin } from "./cli/output";
import { answerToName } from "./cli/program";
import { runQio } from "./qio/main";

/** Commands come from standard input when no -c is given (as qemu-io's non-interactive use). */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

answerToName("qio", process.argv[1]);
// qemu-io's stdout is line-buffered on a terminal and block-buffered otherwise; the same here.
runBin(async (args, io) => {
  if (process.stdout.isTTY) return runQio(args, io, readStdin);
  const buffered = blockBufferedOutput(io);
  try {
    return await runQio(args, buffered, readStdin);
  } finally {
    buffered.flush();
  }
});
