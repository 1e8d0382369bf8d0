process.stderr.write("qiotests: not implemented yet\n");
process.exitCode = 1;
