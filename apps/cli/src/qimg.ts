import { blockBufferedOutput, runBin } from "./cli/output";
import { answerToName } from "./cli/program";
import { refreshProgramName } from "./qimg/help";
import { runQimg } from "./qimg/main";

answerToName("qimg", process.argv[1]);
refreshProgramName();
// qemu-img's stdout is block-buffered off a terminal. For check, whose findings (stderr) and summary (stdout)
// interleave, the same here: the second pass's findings come before the summary of the repairs.
runBin(async (args, io) => {
  const command = args.find((a, i) => !a.startsWith("-") && args[i - 1] !== "-T");
  if (process.stdout.isTTY || command !== "check") return runQimg(args, io);
  const buffered = blockBufferedOutput(io);
  try {
    return await runQimg(args, buffered);
  } finally {
    buffered.flush();
  }
});
