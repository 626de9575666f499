// The client side of src/server/rpc-errors.ts: reads the google.rpc.Status a failed
// call carries in its `grpc-status-details-bin` trailer and unpacks the
// details we send (ErrorInfo, BadRequest). Used by the CLI to print the
// reason, and by tests to assert on it.
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import type { Metadata } from "@grpc/grpc-js";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { BadRequest, ErrorInfo } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import type { Status } from "../../gen/google/rpc/status_pb.js";
import { STATUS_DETAILS_KEY } from "../wire/metadata-keys.js";

export interface RpcErrorDetails {
  /** The whole google.rpc.Status, details still packed. */
  readonly status: Status;
  /** The first ErrorInfo among the details. */
  readonly errorInfo?: ErrorInfo;
  /** The first BadRequest among the details. */
  readonly badRequest?: BadRequest;
}

/** Anything with the trailing metadata of a failed call, e.g. a grpc-js ServiceError. */
export interface WithMetadata {
  readonly metadata?: Metadata;
}

/**
 * The rich status of a failed call; undefined when the trailer is missing
 * (a server that sends none, or a failure before the server answered) or
 * holds bytes that are not a google.rpc.Status.
 */
export function readErrorDetails(error: unknown): RpcErrorDetails | undefined {
  const metadata = (error as WithMetadata | null | undefined)?.metadata;
  if (metadata === undefined || typeof metadata.get !== "function") return undefined;
  const value = metadata.get(STATUS_DETAILS_KEY)[0];
  if (!(value instanceof Uint8Array)) return undefined;
  let status: Status;
  let errorInfo: ErrorInfo | undefined;
  let badRequest: BadRequest | undefined;
  try {
    status = fromBinary(StatusSchema, value);
    for (const detail of status.details) {
      errorInfo ??= anyUnpack(detail, ErrorInfoSchema);
      badRequest ??= anyUnpack(detail, BadRequestSchema);
    }
  } catch {
    return undefined;
  }
  return {
    status,
    ...(errorInfo === undefined ? {} : { errorInfo }),
    ...(badRequest === undefined ? {} : { badRequest }),
  };
}

/** The ErrorInfo reason of a failed call, e.g. "DEVICE_IN_USE"; undefined without one. */
export function errorReason(error: unknown): string | undefined {
  return readErrorDetails(error)?.errorInfo?.reason;
}
