// One error type for everything that goes wrong talking to a running QEMU,
// with a machine-readable reason the engine maps to its own job reasons.
// Kept here (not in the engine) because src/sources imports nothing above it.

export type QemuSourceReason =
  /** The QMP socket is missing, refuses connections, or QEMU never greeted (another client holds the monitor). */
  | "QMP_UNREACHABLE"
  /** QEMU sent something that is not QMP (not JSON, no greeting, unknown reply id). */
  | "QMP_PROTOCOL_ERROR"
  /** A command got no reply within its timeout. */
  | "QMP_TIMEOUT"
  /** QEMU answered a command with an error (class and desc are kept). */
  | "QMP_COMMAND_FAILED"
  /** The connection closed (QEMU exited or the socket was closed) before the reply came. */
  | "QMP_CLOSED"
  /** The drive is neither a BlockBackend nor a node name of this QEMU. */
  | "DRIVE_NOT_FOUND"
  /** QEMU already runs an NBD server (a migration, another backup): it runs only one at a time. */
  | "NBD_SERVER_BUSY"
  /** The scratch overlay could not be created or attached. */
  | "SCRATCH_CREATE_FAILED"
  /** Any other step of the freeze failed (transaction, export). */
  | "FLEECING_FAILED"
  /** The caller passed options that cannot work (bad tag, no drives, duplicate drives). */
  | "INVALID_OPTIONS";

export interface QemuSourceErrorDetails {
  /** QMP's error class, e.g. "GenericError", "DeviceNotFound". */
  readonly qmpClass?: string | undefined;
  /** QMP's human-readable error description. */
  readonly qmpDesc?: string | undefined;
  /** The drive the error is about, as the caller named it. */
  readonly drive?: string | undefined;
  readonly cause?: unknown;
}

export class QemuSourceError extends Error {
  readonly reason: QemuSourceReason;
  readonly qmpClass: string | undefined;
  readonly qmpDesc: string | undefined;
  readonly drive: string | undefined;

  constructor(reason: QemuSourceReason, message: string, details: QemuSourceErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "QemuSourceError";
    this.reason = reason;
    this.qmpClass = details.qmpClass;
    this.qmpDesc = details.qmpDesc;
    this.drive = details.drive;
  }
}

/** True when `error` is a QMP command failure whose description matches `pattern`. */
export function isQmpFailure(error: unknown, pattern: RegExp): error is QemuSourceError {
  return (
    error instanceof QemuSourceError &&
    error.reason === "QMP_COMMAND_FAILED" &&
    error.qmpDesc !== undefined &&
    pattern.test(error.qmpDesc)
  );
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
