process.stderr.write("qimg: not implemented yet\n");
process.exitCode = 1;
