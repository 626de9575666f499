// Why a source cannot be opened, in terms the engine maps to a gRPC status:
// sources sit below the engine and know nothing of gRPC or EngineError.

export type SourceRefusalCode =
  | "invalid-argument"
  | "not-found"
  | "failed-precondition"
  | "permission-denied"
  | "unavailable";

export class SourceRefusal extends Error {
  readonly code: SourceRefusalCode;
  /** Stable machine-readable name, e.g. "IMAGE_FORMAT_MISMATCH". */
  readonly reason: string;
  /** The request field at fault, e.g. "devices[0].image.format". */
  readonly field: string;

  constructor(code: SourceRefusalCode, reason: string, message: string, field: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SourceRefusal";
    this.code = code;
    this.reason = reason;
    this.field = field;
  }
}
