/**
 * Remote images on Node: http(s) URLs through RemoteStore over node:http(s) (so `sslverify` works), and
 * s3:// objects configured from the environment as the AWS tools are (AWS_ENDPOINT_URL_S3 or
 * AWS_ENDPOINT_URL, AWS_REGION or AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
 */
import { RemoteStore, nodeFetch, openS3Store, type RemoteStoreOptions, type S3Config } from "@qcowkit/datafile/node";
import { Qcow2Error } from "@qcowkit/spec";
import type { RemoteName } from "../remote/remote-name";

/** The S3 configuration in `env`; an endpoint means path-style addressing. */
export function s3ConfigFromEnv(env: Record<string, string | undefined> = process.env): S3Config {
  const endpoint = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL;
  return {
    ...(endpoint ? { endpoint } : {}),
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || "us-east-1",
    ...(env.AWS_ACCESS_KEY_ID ? { accessKeyId: env.AWS_ACCESS_KEY_ID } : {}),
    ...(env.AWS_SECRET_ACCESS_KEY ? { secretAccessKey: env.AWS_SECRET_ACCESS_KEY } : {}),
    ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}),
  };
}

/** The one-line refusal of a read-write open of a remote object, naming the alternative. */
export function remoteReadOnlyError(name: string, what = "image"): Qcow2Error {
  return new Qcow2Error(
    "READ_ONLY",
    `a remote ${what} is read-only; write to a local overlay instead (qimg create -f qcow2 -b '${name}' -F FMT overlay.qcow2)`,
    { errno: "EROFS" },
  );
}

/** Extra RemoteStore settings (tests, benchmarks, servers). */
export interface RemoteOpenOptions {
  store?: Omit<RemoteStoreOptions, "fetch" | "sign" | "name">;
}

/** Open the byte store behind a remote name (read-only). */
export async function openRemoteStore(name: string, remote: RemoteName, opts: RemoteOpenOptions = {}): Promise<RemoteStore> {
  const settings: RemoteStoreOptions = {
    ...opts.store,
    ...(remote.readahead !== undefined ? { readahead: remote.readahead } : {}),
    ...(remote.timeoutSeconds !== undefined ? { timeoutMs: remote.timeoutSeconds * 1000 } : {}),
    fetch: nodeFetch({ ...(remote.sslVerify !== undefined ? { sslVerify: remote.sslVerify } : {}) }),
  };
  if (remote.kind === "s3") return openS3Store(remote.url, s3ConfigFromEnv(), { ...settings, name });
  return RemoteStore.open(remote.url, { ...settings, name });
}
