// The one place where failures become gRPC statuses. Engine errors map by
// kind; anything else is a bug and becomes INTERNAL with a generic message
// (the stack goes to the log, never to the client). Rich error details
// (google.rpc.Status with ErrorInfo / BadRequest) belong here as well: they
// ride in the metadata built by toRpcError.
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { EngineError } from "../engine/errors.js";
import type { EngineErrorKind } from "../engine/errors.js";

const STATUS_BY_KIND: Readonly<Record<EngineErrorKind, grpc.status>> = {
  "invalid-argument": grpc.status.INVALID_ARGUMENT,
  "not-found": grpc.status.NOT_FOUND,
  "already-exists": grpc.status.ALREADY_EXISTS,
  "failed-precondition": grpc.status.FAILED_PRECONDITION,
  "permission-denied": grpc.status.PERMISSION_DENIED,
  unavailable: grpc.status.UNAVAILABLE,
  internal: grpc.status.INTERNAL,
};

const GENERIC_INTERNAL_MESSAGE = "internal error; see the server log";

/** An error grpc-js sends as a status: code, message and trailing metadata. */
export interface RpcError extends Error {
  readonly code: grpc.status;
  readonly details: string;
  readonly metadata: grpc.Metadata;
}

function rpcError(code: grpc.status, details: string): RpcError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

/** Maps any thrown value to the status the client receives. */
export function toRpcError(error: unknown): RpcError {
  if (error instanceof EngineError && error.kind !== "internal") {
    return rpcError(STATUS_BY_KIND[error.kind], error.message);
  }
  // Internal errors may carry paths, errno texts or stack details: they go
  // to the log only.
  return rpcError(grpc.status.INTERNAL, GENERIC_INTERNAL_MESSAGE);
}

/** The status name, e.g. "NOT_FOUND", for logs. */
export function statusName(code: grpc.status): string {
  return grpc.status[code] ?? String(code);
}

/**
 * Maps a failure of `rpc` to its status and logs it: refused requests are
 * routine (info), INTERNAL is a bug (error, with the stack).
 */
export function reportRpcFailure(logger: Logger, rpc: string, error: unknown): RpcError {
  const failure = toRpcError(error);
  const fields = { rpc, code: statusName(failure.code) };
  if (error instanceof EngineError && failure.code !== grpc.status.INTERNAL) {
    logger.info({ ...fields, reason: error.reason, field: error.field, details: failure.details }, "rpc refused");
  } else {
    logger.error({ ...fields, err: error }, "rpc failed");
  }
  return failure;
}
