import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseCommandLine, type QnbdOptions } from "../../src/cli-args";
import { TlsSetupError, loadTlsOptions, parsePskFile, parseTlsObject } from "../../src/tls";
import { makeTempDir } from "../helpers";

function options(argv: string[]): QnbdOptions {
  const r = parseCommandLine(argv);
  if (r.kind !== "run") throw new Error(`expected options, got ${JSON.stringify(r)}`);
  return r.options;
}

function error(argv: string[]): string {
  const r = parseCommandLine(argv);
  if (r.kind !== "error") throw new Error(`expected an error, got ${r.kind}`);
  return r.message;
}

describe("qnbd command line", () => {
  it("has qemu-nbd's defaults", () => {
    expect(options(["img"])).toMatchObject({
      file: "img", port: 10809, bind: "0.0.0.0", shared: 1, persistent: false, exportName: "", readOnly: false,
      cache: "writeback", discard: "ignore", handshakeLimitSeconds: 10,
    });
  });

  it("parses short, bundled, attached and long forms, with operands anywhere", () => {
    const o = options(["-rtp10900", "img", "-x", "name", "--description=d", "--bitmap", "b1", "-Bb2", "-A", "-f", "raw", "-e", "0"]);
    expect(o).toMatchObject({
      readOnly: true, persistent: true, port: 10900, file: "img", exportName: "name", description: "d",
      bitmaps: ["b1", "b2"], allocationDepth: true, format: "raw", shared: 0,
    });
    expect(options(["--pers", "--cache", "unsafe", "--discard=unmap", "--fork", "--pid-file=p", "-k", "/s", "i"])).toMatchObject({
      persistent: true, cache: "unsafe", discard: "unmap", fork: true, pidFile: "p", socketPath: "/s",
    });
    expect(options(["-n", "--", "-img"])).toMatchObject({ cache: "none", file: "-img" });
  });

  it("reports getopt's errors", () => {
    expect(error([])).toBe("Invalid number of arguments");
    expect(error(["a", "b"])).toBe("Invalid number of arguments");
    expect(error(["--bogus", "a"])).toBe("unrecognized option '--bogus'");
    expect(error(["-z", "a"])).toBe("invalid option -- 'z'");
    expect(error(["a", "-x"])).toBe("option requires an argument -- 'x'");
    expect(error(["a", "--bitmap"])).toBe("option '--bitmap' requires an argument");
    expect(error(["--persistent=1", "a"])).toBe("option '--persistent' doesn't allow an argument");
    expect(error(["--s=1", "a"])).toBe("option '--s=1' is ambiguous; possibilities: '--socket' '--snapshot' '--shared' '--selinux-label' '--safe'");
  });

  it("reports qemu-nbd's value errors", () => {
    expect(error(["-e", "abc", "a"])).toBe("Invalid shared device number 'abc'");
    expect(error(["-e", "-1", "a"])).toBe("Invalid shared device number '-1'");
    expect(error(["--cache=foo", "a"])).toBe("Invalid cache mode `foo'");
    expect(error(["--discard=foo", "a"])).toBe("Invalid discard mode `foo'");
    expect(error(["-p", "abc", "a"])).toBe("address resolution failed for 0.0.0.0:abc: Servname not supported for ai_socktype");
    expect(error(["-p", "99999", "a"])).toMatch(/^address resolution failed/);
    expect(error(["-x", "n".repeat(4097), "a"])).toMatch(/^export name 'n+' too long$/);
    expect(error(["-D", "n".repeat(4097), "a"])).toMatch(/^export description 'n+' too long$/);
    expect(error(["--handshake-limit=x", "a"])).toBe("Invalid handshake limit 'x'");
  });

  it("refuses qemu-nbd options it does not implement", () => {
    expect(error(["-c", "/dev/nbd0", "a"])).toBe("option '--connect' is not supported");
    expect(error(["--image-opts", "a"])).toBe("option '--image-opts' is not supported");
  });

  it("returns help and version requests", () => {
    expect(parseCommandLine(["--help"]).kind).toBe("help");
    expect(parseCommandLine(["-V"]).kind).toBe("version");
  });

  it("checks the TLS flags", () => {
    expect(options(["--tls-cert", "c", "--tls-key", "k", "--tls-ca", "ca", "i"]).tls).toEqual({
      kind: "x509", certFile: "c", keyFile: "k", caFile: "ca", verifyPeer: true,
    });
    expect(options(["--tls-psk", "p", "i"]).tls).toEqual({ kind: "psk", pskFile: "p" });
    expect(error(["--tls-cert", "c", "i"])).toBe("--tls-cert and --tls-key must be given together");
    expect(error(["--tls-psk", "p", "--tls-cert", "c", "--tls-key", "k", "i"])).toMatch(/cannot be combined/);
    expect(error(["--tls-psk", "p", "--tls-creds", "t", "i"])).toMatch(/cannot be combined/);
  });
});

describe("TLS credential parsing", () => {
  const tmp = makeTempDir();
  afterAll(tmp.cleanup);

  it("reads psktool files", () => {
    const keys = parsePskFile("alice:0011aabb\n\nbob:ff\n");
    expect(keys.get("alice")!.toString("hex")).toBe("0011aabb");
    expect(keys.get("bob")!.toString("hex")).toBe("ff");
    expect(() => parsePskFile("alice:xyz\n")).toThrow(TlsSetupError);
    expect(() => parsePskFile("\n")).toThrow(/no keys/);
  });

  it("reads QEMU --object definitions", () => {
    expect(parseTlsObject("tls-creds-psk,id=t0,dir=/d,endpoint=server")).toEqual({
      id: "t0", creds: { kind: "psk", pskFile: path.join("/d", "keys.psk") },
    });
    expect(parseTlsObject("tls-creds-x509,id=t1,dir=/d,endpoint=server,verify-peer=off")).toEqual({
      id: "t1", creds: { kind: "x509", certFile: "/d/server-cert.pem", keyFile: "/d/server-key.pem", verifyPeer: false },
    });
    expect(() => parseTlsObject("tls-creds-x509,id=t1,dir=/d")).toThrow("Expecting TLS credentials with a server endpoint");
    expect(() => parseTlsObject("secret,id=s,data=x")).toThrow("--object type 'secret' is not supported");
    expect(() => parseTlsObject("tls-creds-psk,id=t,dir=/d,endpoint=server,bogus=1")).toThrow(/bogus/);
  });

  it("reports unreadable credential files in one line", () => {
    expect(() => loadTlsOptions({ kind: "psk", pskFile: path.join(tmp.dir, "missing") })).toThrow(
      /^Unable to read PSK file '.*missing': No such file or directory$/,
    );
    fs.writeFileSync(path.join(tmp.dir, "bad.pem"), "not a key");
    expect(() =>
      loadTlsOptions({ kind: "x509", certFile: path.join(tmp.dir, "bad.pem"), keyFile: path.join(tmp.dir, "bad.pem"), verifyPeer: false }),
    ).toThrow(/^Unable to load TLS credentials/);
  });
});
