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

/** One problem of a request: the field at fault and what is wrong with it. */
export interface FieldViolation {
  readonly reason: string;
  readonly field: string;
  /** Starts with the field, e.g. "devices[0].name: must not be empty". */
  readonly description: string;
}

export class EngineError extends Error {
  readonly kind: EngineErrorKind;
  /** Stable, e.g. "DEVICE_IN_USE", "BACKUP_FILE_EXISTS", "PATH_NOT_ALLOWED". */
  readonly reason: string;
  /** The request field at fault, e.g. "devices[1].path", when there is one. */
  readonly field?: string;
  /** More machine-readable facts for the client, e.g. { latest_revision: "42" }. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Every problem found, when a request has several (the first is the error's own). */
  readonly violations: readonly FieldViolation[];

  constructor(
    kind: EngineErrorKind,
    reason: string,
    message: string,
    field?: string,
    metadata?: Readonly<Record<string, string>>,
    violations: readonly FieldViolation[] = [],
  ) {
    super(message);
    this.name = "EngineError";
    this.kind = kind;
    this.reason = reason;
    if (field !== undefined) this.field = field;
    if (metadata !== undefined) this.metadata = metadata;
    this.violations = violations;
  }
}
