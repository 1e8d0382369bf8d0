process.stderr.write("qnbd: not implemented yet\n");
process.exitCode = 1;
