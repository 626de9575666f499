// How the client commands report failures and which exit code each gets:
// gRPC errors and failed jobs exit 1, usage errors exit 2 (exit-codes.ts).
import { status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";
import { errorReason } from "../client/rpc-error-details.js";
import { escapeControls } from "./escape-controls.js";
import { EXIT_FAILURE, EXIT_USAGE } from "./exit-codes.js";
import { ArgumentSyntaxError } from "./parse-error.js";

/** A mistake in the command line found after parsing, e.g. an unreadable --config file. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ServiceError>).code === "number" &&
    typeof (error as Partial<ServiceError>).details === "string"
  );
}

/** "NOT_FOUND" for 5; the number itself for codes grpc-js does not know. */
export function statusCodeName(code: number): string {
  return GrpcStatus[code] ?? String(code);
}

export interface ErrorReport {
  /** The line for stderr, without the newline. */
  readonly message: string;
  readonly exitCode: number;
}

/**
 * Turns whatever a client command threw into the line to print and the exit
 * code; control characters in it (names the server quotes) are escaped.
 */
export function reportError(error: unknown, serverAddress: string): ErrorReport {
  const report = describeFailure(error, serverAddress);
  return { ...report, message: escapeControls(report.message) };
}

function describeFailure(error: unknown, serverAddress: string): ErrorReport {
  if (error instanceof UsageError || error instanceof ArgumentSyntaxError) {
    return { message: `error: ${error.message}`, exitCode: EXIT_USAGE };
  }
  if (isServiceError(error)) {
    const code = statusCodeName(error.code);
    if (error.code === GrpcStatus.UNAVAILABLE) {
      // grpc-js ends connection failures with an empty "Resolution note:".
      const details = error.details.replace(/\s*Resolution note:\s*$/, "");
      return {
        message: `error: ${code}: cannot reach vmabackup at ${serverAddress} (${details})`,
        exitCode: EXIT_FAILURE,
      };
    }
    // The ErrorInfo reason (e.g. DEVICE_IN_USE) is what scripts and people
    // can act on; the code alone is too coarse.
    const reason = errorReason(error);
    const label = reason === undefined ? code : `${code} (${reason})`;
    return { message: `error: ${label}: ${error.details}`, exitCode: EXIT_FAILURE };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { message: `error: ${message}`, exitCode: EXIT_FAILURE };
}
