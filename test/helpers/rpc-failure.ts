// Assertions on failed calls: the status code, and the google.rpc.Status
// details the server sends with every error (ErrorInfo always, BadRequest
// for INVALID_ARGUMENT).
import type * as grpc from "@grpc/grpc-js";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { expect } from "vitest";
import { readErrorDetails } from "../../src/client/rpc-error-details.js";

/** The error `promise` rejects with; fails the test when it resolves. */
export async function failureOf(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  return promise.then(
    () => {
      throw new Error("expected the call to fail");
    },
    (error: unknown) => error as grpc.ServiceError,
  );
}

/**
 * Expects `promise` to fail with `code`, an ErrorInfo carrying `reason`
 * (and `field` in its metadata, when given), and for INVALID_ARGUMENT a
 * BadRequest violation of that field. Returns the error for more checks.
 */
export async function expectRefusal(
  promise: Promise<unknown>,
  code: grpc.status,
  reason: string,
  field?: string,
): Promise<grpc.ServiceError> {
  const error = await failureOf(promise);
  expect(error.code, `${GrpcStatus[error.code]}: ${error.details}`).toBe(code);
  const details = readErrorDetails(error);
  expect(details?.status).toMatchObject({ code, message: error.details });
  expect(details?.errorInfo).toMatchObject({
    reason,
    domain: "vmabackup",
    ...(field === undefined ? {} : { metadata: { field } }),
  });
  if (code === GrpcStatus.INVALID_ARGUMENT) {
    expect(details?.badRequest?.fieldViolations).toEqual([
      expect.objectContaining({ field: field ?? "", description: error.details }),
    ]);
  }
  return error;
}
