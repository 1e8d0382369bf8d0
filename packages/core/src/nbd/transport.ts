/**
 * What the NBD client needs of a connection: a byte stream both ways. The Node entry provides TCP and Unix
 * sockets (`connectNbdSocket`); other runtimes can bring their own (a WebSocket bridge, an in-memory pipe).
 */

export interface NbdReceiver {
  /** Bytes from the server, in order. */
  data(chunk: Uint8Array): void;
  /** The stream ended: cleanly (no argument) or with a transport error (a one-line message). */
  end(error?: Error): void;
}

export interface NbdTransport {
  /** Queue bytes for the server, in order. The transport may keep `data` until it is sent. */
  send(data: Uint8Array): void;
  /** Resolves once little enough is queued that more may be sent (backpressure). */
  drained?(): Promise<void>;
  /** Start delivering what arrives to `receiver` (called once, right after connecting). */
  start(receiver: NbdReceiver): void;
  /** Send what is queued, then close; resolves once the connection is closed. */
  end(): Promise<void> | void;
  /** Close at once; nothing more is delivered. */
  destroy(): void;
}
