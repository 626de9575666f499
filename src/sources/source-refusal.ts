// Why a source cannot be opened, in terms that know nothing of gRPC or the
// engine: a code the engine maps to its own error kinds (and the server to
// a gRPC status), a stable reason and the request field at fault.

/** What kind of refusal it is; the engine maps each to one gRPC status code. */
export type SourceRefusalCode =
  | "not-found"
  | "invalid-argument"
  | "failed-precondition"
  | "permission-denied"
  | "unavailable";

/** Stable reasons of refusals raised while opening sources (the engine's REASON includes them). */
export const SOURCE_REASON = {
  SOURCE_NOT_FOUND: "SOURCE_NOT_FOUND",
  SOURCE_UNREADABLE: "SOURCE_UNREADABLE",
  SOURCE_EMPTY: "SOURCE_EMPTY",
  SOURCE_TYPE_UNSUPPORTED: "SOURCE_TYPE_UNSUPPORTED",
  SOURCE_OPEN_FAILED: "SOURCE_OPEN_FAILED",
  SOURCE_PATH_TOO_LONG: "SOURCE_PATH_TOO_LONG",
  /** Confinement: the source lies outside the allowed directories (permission-denied). */
  PATH_NOT_ALLOWED: "PATH_NOT_ALLOWED",
  /** The kind of source is known but its opener is not part of this build yet. */
  SOURCE_KIND_NOT_WIRED: "SOURCE_KIND_NOT_WIRED",
} as const;

export class SourceRefusal extends Error {
  readonly code: SourceRefusalCode;
  /** Stable, e.g. "SOURCE_NOT_FOUND", "QMP_UNREACHABLE". */
  readonly reason: string;
  /** The request field at fault, e.g. "devices[1].path". */
  readonly field: string;

  /** `message` starts with the field, e.g. `devices[0].path: "a.raw" does not exist`. */
  constructor(code: SourceRefusalCode, reason: string, message: string, field: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SourceRefusal";
    this.code = code;
    this.reason = reason;
    this.field = field;
  }
}
