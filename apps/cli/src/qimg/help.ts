/** qimg --help and --version texts. */
import { VERSION } from "../cli/version";

/** The program name in messages. */
export const PROG = "qimg";

/** qemu-img commands qimg does not implement (refused with a clear message instead of "not found"). */
export const NOT_IMPLEMENTED = ["bench", "bitmap", "commit", "dd", "measure", "rebase", "snapshot"];

export function versionText(): string {
  return `${PROG} version ${VERSION} (qcowkit), compatible with qemu-img 7.2\n`;
}

export function helpText(): string {
  return `${versionText()}usage: ${PROG} [standard options] command [command options]
QEMU disk image utility (qcowkit implementation, qcow2 and raw only)

    '-h', '--help'       display this help and exit
    '-V', '--version'    output version information and exit
    '-T', '--trace'      accepted for compatibility and ignored

Command syntax:
  amend [-p] [-q] [-f fmt] [--force] -o options filename
  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-U] filename
  compare [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] filename1 filename2
  convert [-U] [-c] [-p] [-q] [-n] [-f fmt] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-m num_coroutines] [-W] [--target-is-zero] filename [filename2 [...]] output_filename
  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]
  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
  map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename
  resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size

Command parameters:
  'filename' is a disk image filename
  'fmt' is the disk image format: qcow2 or raw. It is guessed automatically when omitted
  'size' is the disk image size in bytes. Optional suffixes
    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),
    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are
    supported. 'b' is ignored.
  'output_filename' is the destination disk image filename
  'output_fmt' is the destination format
  'options' is a comma separated list of format specific options in a
    name=value format. Use -o help for an overview of the options supported by
    the used format
  '-c' indicates that target image must be compressed (qcow2 only)
  '-u' allows unsafe backing chains: the backing file is not opened at creation
  '-p' show progress of command (only certain commands)
  '-q' use Quiet mode - do not print any output (except errors)
  '-S' indicates the consecutive number of bytes (defaults to 4k) that must
       contain only zeros for ${PROG} to create a sparse image during
       conversion. If the number of bytes is 0, the source will not be scanned for
       unallocated or zero sectors, and the destination image will always be
       fully allocated
  '--output' takes the format in which the output must be done (human or json)
  '-n' skips the target volume creation (useful if the volume is created
       prior to running ${PROG})

Parameters to check subcommand:
  '-r' tries to repair any inconsistencies that are found during the check.

Parameters to compare subcommand:
  '-f' first image format
  '-F' second image format
  '-s' run in Strict mode - fail on different image size or sector allocation

Supported formats: qcow2 raw

Not implemented: ${NOT_IMPLEMENTED.join(" ")}; --image-opts, --object.
`;
}

