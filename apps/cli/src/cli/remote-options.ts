/**
 * The curl driver's block options in --image-opts and `open -o` ("file.driver=https,file.url=URL,
 * file.readahead=64k,file.sslverify=off,file.timeout=10", and the same under "data-file."): taken out of the
 * option list and turned into a json: name, which @qcowkit/core opens as a remote image (remote-name.ts).
 */
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
    const file: Record<string, string> = {};
    rest = rest.filter(([key, value]) => {
      if (!key.startsWith(prefix)) return true;
      const name = key.slice(prefix.length);
      if (name !== "driver" && name !== "filename" && !REMOTE_KEYS.includes(name)) return true;
      file[name === "filename" ? "url" : name] = value;
      return false;
    });
    names[prefix] = `json:${JSON.stringify({ file })}`;
  }
  return { rest, names };
}
