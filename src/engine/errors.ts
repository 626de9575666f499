// Errors the engine raises for requests it refuses. Each kind maps to one
// gRPC status code in the server; `reason` is a stable machine-readable name.

export type EngineErrorKind =
  | "invalid-argument"
  | "not-found"
  | "already-exists"
  | "failed-precondition"
  | "permission-denied"
  | "out-of-range"
  | "resource-exhausted"
  | "unavailable"
  | "internal";

export class EngineError extends Error {
  readonly kind: EngineErrorKind;
  /** Stable, e.g. "DEVICE_IN_USE", "BACKUP_FILE_EXISTS", "PATH_NOT_ALLOWED". */
  readonly reason: string;
  /** The request field at fault, e.g. "devices[1].path", when there is one. */
  readonly field?: string;
  /** More machine-readable facts for the client, e.g. { latest_revision: "42" }. */
  readonly metadata?: Readonly<Record<string, string>>;

  constructor(
    kind: EngineErrorKind,
    reason: string,
    message: string,
    field?: string,
    metadata?: Readonly<Record<string, string>>,
  ) {
    super(message);
    this.name = "EngineError";
    this.kind = kind;
    this.reason = reason;
    this.field = field;
    if (metadata !== undefined) this.metadata = metadata;
  }
}
