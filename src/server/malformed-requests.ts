// Bytes that are not a protobuf message of the method's request type are
// the client's mistake: INVALID_ARGUMENT with the usual details. grpc-js
// answers a deserializer that throws with a bare INTERNAL ("Error
// deserializing request"), before any handler or interceptor could say
// better; so the server's deserializers never throw: they hand a
// MalformedRequest to the handler, which the wrapper below refuses.
import type * as grpc from "@grpc/grpc-js";
import type { DescMethod } from "@bufbuild/protobuf";
import { malformedRequestError } from "./rpc-errors.js";

/** Stands for a request that could not be decoded. */
export class MalformedRequest {
  constructor(
    /** e.g. "vmabackup.v1.BackupRequest". */
    readonly typeName: string,
    /** The decoder's complaint, e.g. "premature EOF". */
    readonly problem: string,
  ) {}
}

/** True for the methods whose one request message arrives before the handler runs. */
export function hasSingleRequest(method: DescMethod): boolean {
  return method.methodKind === "unary" || method.methodKind === "server_streaming";
}

/** `deserialize`, answering a MalformedRequest instead of throwing. */
export function tolerantDeserializer<T>(
  deserialize: (bytes: Buffer) => T,
  typeName: string,
): (bytes: Buffer) => T | MalformedRequest {
  return (bytes) => {
    try {
      return deserialize(bytes);
    } catch (error) {
      return new MalformedRequest(typeName, error instanceof Error ? error.message : String(error));
    }
  };
}

type SingleRequestHandler = grpc.handleUnaryCall<unknown, unknown> | grpc.handleServerStreamingCall<unknown, unknown>;

/** `handler` of `method`, refusing a MalformedRequest before it runs. */
export function refusingMalformed(method: DescMethod, handler: SingleRequestHandler): SingleRequestHandler {
  if (method.methodKind === "unary") {
    const unary = handler as grpc.handleUnaryCall<unknown, unknown>;
    return ((call, callback) => {
      if (call.request instanceof MalformedRequest) {
        callback(malformedRequestError(call.request.typeName, call.request.problem));
        return;
      }
      unary(call, callback);
    }) satisfies grpc.handleUnaryCall<unknown, unknown>;
  }
  const streaming = handler as grpc.handleServerStreamingCall<unknown, unknown>;
  return ((call) => {
    if (call.request instanceof MalformedRequest) {
      call.emit("error", malformedRequestError(call.request.typeName, call.request.problem));
      return;
    }
    streaming(call);
  }) satisfies grpc.handleServerStreamingCall<unknown, unknown>;
}
