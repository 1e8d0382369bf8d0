import { runBin } from "./cli/output";
import { answerToName } from "./cli/program";
import { runQio } from "./qio/main";

/** Commands come from standard input when no -c is given (as qemu-io's non-interactive use). */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

answerToName("qio", process.argv[1]);
runBin((args, io) => runQio(args, io, readStdin));
