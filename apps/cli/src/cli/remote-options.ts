/**
 * The curl driver's block options in --image-opts and `open -o` ("file.driver=https,file.url=URL,
 * file.readahead=64k,file.sslverify=off,file.timeout=10", and the same under "data-file."): taken out of the
 * option list and turned into a json: name, which @qcowkit/core opens as a remote image (remote-name.ts).
 */
import { takeNodeOptions } from "./driver-options";

const REMOTE_KEYS = ["url", "readahead", "sslverify", "timeout"];
const PREFIXES = ["file.", "data-file."] as const;

export interface RemoteOptionNames {
  /** The remaining options. */
  rest: Array<[string, string]>;
  /** json: names for "file." and "data-file." when their driver is http or https. */
  names: Partial<Record<(typeof PREFIXES)[number], string>>;
}

export function takeRemoteOptions(options: Array<[string, string]>): RemoteOptionNames {
  const names: RemoteOptionNames["names"] = {};
  let rest = options;
  for (const prefix of PREFIXES) {
    const driver = rest.find(([key]) => key === `${prefix}driver`)?.[1];
    if (driver !== "http" && driver !== "https") continue;
    let file: Record<string, string>;
    ({ rest, taken: file } = takeNodeOptions(rest, prefix, (name) => (name === "filename" ? "url" : name === "driver" || REMOTE_KEYS.includes(name) ? name : undefined)));
    names[prefix] = `json:${JSON.stringify({ file })}`;
  }
  return { rest, names };
}
