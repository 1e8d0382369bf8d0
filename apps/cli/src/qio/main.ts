/**
 * qio: qemu-io compatible front end. `qio [OPTIONS]... [-c STRING]... [file]`: the commands given with -c
 * run in order (or, without -c, the lines read from standard input); the exit code is 1 when any failed.
 */
import { CliError, UsageError, errorText, reportError, type Output, printHint } from "../cli/errors";
import { isQcow2Error } from "@qcowkit/spec";
import { getopt } from "../cli/getopt";
import { defineObject, resetSecrets } from "../cli/secrets";
import { cliOpenDefaults, closeQuietly } from "../cli/open";
import { programNames, versionLine } from "../cli/program";
import { checkCacheMode, drainAio, openForSession, runCommandLine, type Session } from "./commands";
import { applyBlockOptions, parseDiscard, type OpenRequest } from "./open";

/** The program name in messages ("qemu-io" when started under that name). */
const prog = (): string => programNames.qio;

export function qioUsage(): string {
  return `Usage: ${prog()} [OPTIONS]... [-c STRING]... [file]
Runs reads, writes and other requests against a disk image (qcowkit; qcow2 and raw).

  --object OBJECTDEF   define a secret: secret,id=ID,data=TEXT|file=PATH[,format=raw|base64]
  --image-opts         treat file as option string: driver=qcow2,file.filename=IMG,
                       data-file.filename=DATA (data file override), backing.file.filename=B,
                       backing=null, read-only=on|off, discard=ignore|unmap, file.locking=on|off,
                       encrypt.key-secret=ID, encrypt.format=aes|luks
  -c, --cmd STRING     a qio command line to run (repeatable; run in order)
  -f, --format FMT     the image's format, qcow2 or raw (probed when left out)
  -r, --read-only      open the image without write access
  -s, --snapshot       send writes to a temporary overlay, leaving the image as it was
  -n, --nocache        accepted and ignored (short for -t none)
  -C, --copy-on-read   accepted and ignored
  -m, --misalign       accepted and ignored
  -k, --native-aio     accepted and ignored
  -i, --aio=MODE       accepted and ignored
  -t, --cache=MODE     checked and ignored
  -d, --discard=MODE   what discards do to the file: ignore or unmap
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       accepted and ignored
  -U, --force-share    open even when another process holds the image's lock
  -h, --help           this text
  -V, --version        the version

'${prog()} -c help' lists the commands.
`;
}

/** Run qio; `stdin` supplies commands when no -c is given. Returns the exit code. */
export async function runQio(args: string[], io: Output, stdin?: () => Promise<string>): Promise<number> {
  let parsed;
  try {
    parsed = getopt(args, {
      short: "hVc:d:f:rsnCmki:t:T:U",
      argv0: prog(),
      style: { command: prog() },
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "version", hasArg: false, key: "V" },
        { name: "cmd", hasArg: true, key: "c" },
        { name: "format", hasArg: true, key: "f" },
        { name: "read-only", hasArg: false, key: "r" },
        { name: "snapshot", hasArg: false, key: "s" },
        { name: "nocache", hasArg: false, key: "n" },
        { name: "copy-on-read", hasArg: false, key: "C" },
        { name: "misalign", hasArg: false, key: "m" },
        { name: "native-aio", hasArg: false, key: "k" },
        { name: "aio", hasArg: true, key: "i" },
        { name: "discard", hasArg: true, key: "d" },
        { name: "cache", hasArg: true, key: "t" },
        { name: "trace", hasArg: true, key: "T" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "force-share", hasArg: false, key: "U" },
        { name: "safe", hasArg: false, key: "safe" },
      ],
    });
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    io.err(`${e.message}\n`);
    io.out(qioUsage());
    return 1;
  }
  resetSecrets();
  const commands: string[] = [];
  let req: OpenRequest = { filename: "", readOnly: false, forceShare: false, discard: "unmap" };
  let imageOpts = false;
  let writethrough = true;
  try {
    for (const o of parsed.options) {
      switch (o.key) {
        case "h":
          io.out(qioUsage());
          return 0;
        case "V":
          io.out(versionLine("qio"));
          return 0;
        case "c":
          commands.push(o.value!);
          break;
        case "f":
          req.format = o.value!;
          break;
        case "r":
          req.readOnly = true;
          break;
        case "U":
          req.forceShare = true;
          break;
        case "safe":
          // Untrusted image: see @qcowkit/core's README, "Safe mode".
          cliOpenDefaults.safe = true;
          break;
        case "d":
          req.discard = parseDiscard(o.value!);
          break;
        case "t":
          writethrough = checkCacheMode(o.value!);
          break;
        case "n":
          writethrough = false;
          break;
        case "i":
          if (!["threads", "native", "io_uring"].includes(o.value!)) throw new CliError(`Invalid aio option: ${o.value}`);
          break;
        case "s":
          req.snapshot = true;
          break;
        case "object":
          defineObject(o.value!);
          break;
        case "image-opts":
          imageOpts = true;
          break;
      }
    }
  } catch (e) {
    io.err(`${prog()}: ${errorText(e)}\n`);
    return 1;
  }
  if (parsed.operands.length > 1) {
    io.out(qioUsage());
    return 1;
  }
  const session: Session = {
    io,
    image: undefined,
    request: undefined,
    writethrough,
    quit: false,
    open: (r) => openForSession(session, r),
  };
  let failed = false;
  try {
    if (parsed.operands.length === 1) {
      const operand = parsed.operands[0]!;
      try {
        if (imageOpts) {
          if (req.format !== undefined) throw new CliError("--image-opts and -f are mutually exclusive");
          try {
            req = applyBlockOptions(req, operand, true, (w) => io.err(`${prog()}: warning: ${w}\n`));
          } catch (e) {
            throw new CliError(`can't open: ${errorText(e)}`, { cause: e });
          }
        } else {
          req.filename = operand;
        }
        await session.open(req);
      } catch (e) {
        io.err(`${prog()}: ${errorText(e)}\n`);
        printHint(e, io);
        return 1;
      }
    }
    const interactive = commands.length === 0 && stdin !== undefined;
    session.interactive = interactive;
    const lines = interactive ? (await stdin!()).split("\n") : commands;
    if (interactive && lines[lines.length - 1] === "") lines.pop();
    for (const line of lines) {
      if (session.quit) break;
      if (interactive) {
        io.out(`${prog()}> `);
        io.flush?.(); // qemu-io flushes stdout after its prompt
      }
      if (!(await runCommandLine(session, line))) failed = true;
    }
    // The prompt that met the end of the input.
    if (interactive && !session.quit) {
      io.out(`${prog()}> `);
      io.flush?.();
    }
    await drainAio(session);
    const image = session.image;
    session.image = undefined;
    // As qemu-io's exit (bdrv_close): a failure of the final flush is not reported.
    if (image) await image.close().catch((e: unknown) => {
      if (!isQcow2Error(e)) throw e;
    });
  } catch (e) {
    await closeQuietly(session.image);
    return reportError(prog(), e, io);
  }
  return failed ? 1 : 0;
}
