import { runBin } from "./cli/output";
import { answerToName } from "./cli/program";
import { refreshProgramName } from "./qimg/help";
import { runQimg } from "./qimg/main";

answerToName("qimg", process.argv[1]);
refreshProgramName();
runBin(runQimg);
