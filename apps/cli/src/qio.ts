process.stderr.write("qio: not implemented yet\n");
process.exitCode = 1;
