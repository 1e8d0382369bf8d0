/**
 * Socket reads into memory the caller chooses (issue 17, item 2).
 *
 * By default every read of a Node socket arrives as a new Buffer (64 KiB under load). A server receiving
 * WRITE payloads turns those into garbage outside V8's heap as fast as the client sends, and V8 frees it only
 * now and then, so the process's peak memory grows with the write rate. Node's `net.Socket` can instead read
 * into a buffer given by the `onread` option (`buffer` may be a function, asked for the buffer of each next
 * read), but only for sockets constructed with it, not for the ones a `net.Server` accepts.
 *
 * `readingInto` gives an accepted socket that option: the socket's handle (the private `_handle` property,
 * read only here) moves to a new `net.Socket` built with `onread`, and the accepted object, left without a
 * handle, is destroyed (which also takes it off its server's connection count). The new socket starts
 * reading at once. Where this cannot be done (no handle, a handle that cannot read into a given buffer, a
 * socket that has already read, a constructor that refuses) the result is undefined and the caller keeps the
 * accepted socket and its 'data' events.
 */
import * as net from "node:net";

export interface ReadTarget {
  /** The buffer the next socket read fills (asked before each read). */
  nextBuffer(): Uint8Array;
  /** `n` bytes were read into the start of `buffer` (the one nextBuffer gave); they must be used or copied now. */
  onRead(n: number, buffer: Uint8Array): void;
}

/** The private part of a net.Socket this file relies on. */
interface SocketHandle {
  useUserBuffer?: unknown;
  readStart?: unknown;
}

/**
 * A socket reading `accepted`'s connection into `target`'s buffers, or undefined (see above). `accepted` must
 * be paused and have read nothing (a server created with `pauseOnConnect`); it must not be used afterwards
 * when a socket is returned.
 */
export function readingInto(accepted: net.Socket, target: ReadTarget): net.Socket | undefined {
  const owner = accepted as unknown as { _handle?: SocketHandle | null };
  const handle = owner._handle;
  if (!handle || typeof handle.useUserBuffer !== "function" || typeof handle.readStart !== "function") return undefined;
  if (accepted.bytesRead !== 0 || accepted.destroyed || accepted.isPaused() === false) return undefined;
  // Node asks for the first buffer while the socket is built, and a failure there leaves the handle half
  // moved: make sure the target can answer first.
  if (!(target.nextBuffer() instanceof Uint8Array)) return undefined;
  let socket: net.Socket;
  try {
    socket = new net.Socket({
      handle,
      allowHalfOpen: accepted.allowHalfOpen,
      onread: { buffer: () => target.nextBuffer(), callback: (n: number, buffer: Uint8Array) => target.onRead(n, buffer) },
    } as net.SocketConstructorOpts);
  } catch {
    return undefined;
  }
  owner._handle = null;
  accepted.destroy();
  return socket;
}
