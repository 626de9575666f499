// The one error type the NBD client throws, with a code saying which kind of
// failure it is, so the layers above can map it to a reason (NBD_UNREACHABLE,
// a timeout, a server error) without parsing messages.

export type NbdErrorCode =
  /** The URI cannot be used (syntax, unsupported transport such as TLS). */
  | "NBD_BAD_URI"
  /** Connecting failed or timed out. */
  | "NBD_UNREACHABLE"
  /** The server does not offer the export. */
  | "NBD_EXPORT_NOT_FOUND"
  /** The server refused or broke the handshake. */
  | "NBD_HANDSHAKE"
  /** The server broke the protocol during transmission (bad magic, unknown handle, short or stray data). */
  | "NBD_PROTOCOL"
  /** The server did not answer in time. */
  | "NBD_TIMEOUT"
  /** The server answered a request with an error (EIO, ...). */
  | "NBD_SERVER_ERROR"
  /** The connection closed (by the server, or by close()) before the answer. */
  | "NBD_CLOSED"
  /** The caller asked for something outside the export. */
  | "NBD_OUT_OF_RANGE";

export class NbdError extends Error {
  override readonly name = "NbdError";
  readonly code: NbdErrorCode;
  /** Device offset of the request that failed, when a request failed. */
  readonly offset: number | undefined;

  constructor(code: NbdErrorCode, message: string, options?: { offset?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.offset = options?.offset;
  }
}
