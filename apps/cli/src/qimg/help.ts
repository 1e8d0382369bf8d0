/** qimg --help and --version texts. */
import { programNames, versionLine } from "../cli/program";

/** The program name in messages ("qemu-img" when started under that name). */
export let PROG = programNames.qimg;

/** Called by the bin once it knows the name it was started as. */
export function refreshProgramName(): void {
  PROG = programNames.qimg;
}


export function versionText(): string {
  return versionLine("qimg");
}

export function helpText(): string {
  return `${versionText()}usage: ${PROG} [standard options] command [command options]
Creates, inspects, checks and copies disk images (qcowkit; qcow2 and raw).

    '-h', '--help'       this text
    '-V', '--version'    the version
    '-T', '--trace'      accepted, without effect

Command syntax:
  amend [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename
  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename
  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--image-opts | -f fmt] filename bitmap
  check [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename
  commit [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename
  compare [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2
  convert [--image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] filename [filename2 [...]] output_filename
  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]
  dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output
  info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
  map [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename
  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--image-opts] [-f fmt] [-l snapshot_param] filename]
  snapshot [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename
  rebase [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename
  resize [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size

Command parameters:
  'filename'         an image file (or an NBD address)
  'fmt'              qcow2 or raw; probed from the file's first bytes when left out
  'size'             in bytes, or with a binary suffix: k or K (1024), M, G, T, P or E
                     (each 1024 times the one before); a trailing 'b' changes nothing
  'output_filename'  the image that convert, dd or measure writes or sizes
  'output_fmt'       the format of that image
  'options'          name=value pairs separated by commas; '-o help' lists what a
                     format takes
  '-c'               write the target's clusters compressed (qcow2 targets)
  '-u'               create or rebase without opening the backing file
  '-p'               print a progress figure while the command runs (some commands)
  '-q'               print nothing but errors
  '-S'               how many zero bytes in a row (4k unless given) convert leaves
                     as a hole in the target; 0 copies every byte and allocates the
                     whole target
  '--output'         human (the default) or json
  '-n'               write into an existing target instead of creating it

check:
  '-r'               repair what the check finds: 'leaks' or 'all'

compare:
  '-f', '-F'         the formats of the first and of the second image
  '-s'               strict: images of different sizes, or with different
                     allocation, count as different

Supported formats: qcow2 raw

qcowkit does not take --object types other than secret, nor images other than local
files and NBD exports.
`;
}

