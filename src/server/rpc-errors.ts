// The one place where failures become gRPC statuses. Engine errors map by
// kind; anything else is a bug and becomes INTERNAL with a generic message
// (the stack goes to the log, never to the client).
//
// Every status also carries a google.rpc.Status, binary-serialised into the
// `grpc-status-details-bin` trailer, as gRPC's richer error model defines
// it: an ErrorInfo with the stable reason always, and a BadRequest field
// violation for INVALID_ARGUMENT. Clients in any language decode it with
// their standard helpers (grpcio-status, status.FromError, ...).
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import type { Any } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import type { Status } from "../../gen/google/rpc/status_pb.js";
import { EngineError, REASON } from "../engine/index.js";
import { STATUS_DETAILS_KEY } from "../wire/metadata-keys.js";
import type { EngineErrorKind, FieldViolation } from "../engine/index.js";

/** ErrorInfo.domain of every error we send. */
export const ERROR_DOMAIN = "vmabackup";

const STATUS_BY_KIND: Readonly<Record<EngineErrorKind, grpc.status>> = {
  "invalid-argument": grpc.status.INVALID_ARGUMENT,
  "not-found": grpc.status.NOT_FOUND,
  "already-exists": grpc.status.ALREADY_EXISTS,
  "failed-precondition": grpc.status.FAILED_PRECONDITION,
  "permission-denied": grpc.status.PERMISSION_DENIED,
  "out-of-range": grpc.status.OUT_OF_RANGE,
  "resource-exhausted": grpc.status.RESOURCE_EXHAUSTED,
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

/** What a refusal tells the client beyond its code and message. */
export interface Refusal {
  readonly reason: string;
  /** The request field at fault, e.g. "devices[1].path". */
  readonly field?: string;
  /** More ErrorInfo metadata, e.g. { job_uuid } of the job in the way. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Every problem of the request, when there are several (else the one of `field`). */
  readonly violations?: readonly FieldViolation[];
}

/**
 * Most BadRequest violations sent: the details travel in a trailer, and
 * clients refuse trailers beyond 8 KiB (grpc-js, grpc-core). The message
 * still says how many problems there were.
 */
export const MAX_REPORTED_VIOLATIONS = 10;

/** The violations to send, and the status message that lists them. */
function reportedViolations(message: string, refusal: Refusal): { message: string; violations: FieldViolation[] } {
  const all = refusal.violations ?? [];
  if (all.length <= 1) {
    return { message, violations: [{ reason: refusal.reason, field: refusal.field ?? "", description: message }] };
  }
  const violations = all.slice(0, MAX_REPORTED_VIOLATIONS);
  const more = all.length - violations.length;
  const listed = violations.map((violation) => violation.description).join("; ");
  return { message: more > 0 ? `${listed}; and ${more} more problems` : listed, violations };
}

/**
 * The google.rpc.Status of a failure: ErrorInfo always (metadata names the
 * field when there is one, and any further facts), BadRequest with one
 * violation per problem for INVALID_ARGUMENT.
 */
export function richStatus(code: grpc.status, message: string, refusal: Refusal): Status {
  const details: Any[] = [
    anyPack(
      ErrorInfoSchema,
      create(ErrorInfoSchema, {
        reason: refusal.reason,
        domain: ERROR_DOMAIN,
        metadata: { ...refusal.metadata, ...(refusal.field === undefined ? {} : { field: refusal.field }) },
      }),
    ),
  ];
  if (code === grpc.status.INVALID_ARGUMENT) {
    const { violations } = reportedViolations(message, refusal);
    details.push(
      anyPack(
        BadRequestSchema,
        create(BadRequestSchema, {
          fieldViolations: violations.map(({ field, description }) => ({ field, description })),
        }),
      ),
    );
  }
  return create(StatusSchema, { code, message, details });
}

/** Trailing metadata carrying `status` as grpc-status-details-bin. */
export function statusDetailsMetadata(status: Status): grpc.Metadata {
  const metadata = new grpc.Metadata();
  const bytes = toBinary(StatusSchema, status);
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  return metadata;
}

function rpcError(code: grpc.status, message: string, refusal: Refusal): RpcError {
  // Several violations: the message lists those the details carry.
  const details = code === grpc.status.INVALID_ARGUMENT ? reportedViolations(message, refusal).message : message;
  const metadata = statusDetailsMetadata(richStatus(code, details, refusal));
  return Object.assign(new Error(details), { code, details, metadata });
}

/** Maps any thrown value to the status the client receives. */
export function toRpcError(error: unknown): RpcError {
  if (error instanceof EngineError && error.kind !== "internal") {
    return rpcError(STATUS_BY_KIND[error.kind], error.message, {
      reason: error.reason,
      ...(error.field === undefined ? {} : { field: error.field }),
      ...(error.metadata === undefined ? {} : { metadata: error.metadata }),
      violations: error.violations,
    });
  }
  // Internal errors may carry paths, errno texts or stack details: they go
  // to the log only, and the client learns no more than the reason.
  return rpcError(grpc.status.INTERNAL, GENERIC_INTERNAL_MESSAGE, { reason: REASON.INTERNAL });
}

/** The status for request bytes that are not a `typeName` message (see malformed-requests.ts). */
export function malformedRequestError(typeName: string, problem: string): RpcError {
  return rpcError(grpc.status.INVALID_ARGUMENT, `request: not a valid ${typeName} message (${problem})`, {
    reason: REASON.REQUEST_MALFORMED,
  });
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
