// Bridges protobuf-es v2 service descriptors and grpc-js on the server side.
// There is no maintained adapter package; grpc-js only needs, per method, a
// path, the streaming flags and four (de)serializers, all of which follow
// from the generated descriptor.
import type * as grpc from "@grpc/grpc-js";
import type { Message, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { messageDeserializer, messageSerializer, methodPath } from "../wire/message-codec.js";
import { passingEncoded } from "./encoded-message.js";
import { hasSingleRequest, refusingMalformed, tolerantDeserializer } from "./malformed-requests.js";

/** The method descriptor fields the adapter and the client rely on. */
type MethodShape = GenServiceMethods[string];

/** Request and response message types of one method. */
type RequestOf<M extends MethodShape> = MessageShape<M["input"]>;
type ResponseOf<M extends MethodShape> = MessageShape<M["output"]>;

/** The grpc-js handler type that fits one method's streaming kind. */
export type MethodHandler<M extends MethodShape> = M["methodKind"] extends "unary"
  ? grpc.handleUnaryCall<RequestOf<M>, ResponseOf<M>>
  : M["methodKind"] extends "server_streaming"
    ? grpc.handleServerStreamingCall<RequestOf<M>, ResponseOf<M>>
    : M["methodKind"] extends "client_streaming"
      ? grpc.handleClientStreamingCall<RequestOf<M>, ResponseOf<M>>
      : grpc.handleBidiStreamingCall<RequestOf<M>, ResponseOf<M>>;

/** Handlers for every method of a service, keyed by the methods' local names. */
export type ServiceImplementation<T extends GenServiceMethods> = {
  [K in keyof T]: MethodHandler<T[K]>;
};

/** The implementation type of a generated service, e.g. ImplementationOf<typeof BackupService>. */
export type ImplementationOf<S> = S extends GenService<infer T> ? ServiceImplementation<T> : never;

/**
 * Turns a generated service into a grpc-js ServiceDefinition. Keys are the
 * methods' local names (e.g. "queryBackup"), so an implementation object is
 * written with the same names the generated code uses.
 */
export function createServiceDefinition<T extends GenServiceMethods>(
  service: GenService<T>,
): grpc.ServiceDefinition<ServiceImplementation<T>> {
  const definition: Record<string, grpc.MethodDefinition<Message, Message>> = {};
  for (const method of service.methods) {
    const kind = method.methodKind;
    definition[method.localName] = {
      path: methodPath(method),
      requestStream: kind === "client_streaming" || kind === "bidi_streaming",
      responseStream: kind === "server_streaming" || kind === "bidi_streaming",
      requestSerialize: messageSerializer(method.input),
      requestDeserialize: messageDeserializer(method.input),
      responseSerialize: messageSerializer(method.output),
      responseDeserialize: messageDeserializer(method.output),
      originalName: method.name,
    };
  }
  return definition as unknown as grpc.ServiceDefinition<ServiceImplementation<T>>;
}

/**
 * Registers a typed implementation of a generated service on a server. A
 * request that does not decode is refused with INVALID_ARGUMENT before the
 * handler runs (see malformed-requests.ts); a response may be written
 * already encoded (see encoded-message.ts).
 */
export function addService<T extends GenServiceMethods>(
  server: grpc.Server,
  service: GenService<T>,
  implementation: ServiceImplementation<T>,
): void {
  const definition = createServiceDefinition(service) as unknown as Record<
    string,
    grpc.MethodDefinition<unknown, unknown>
  >;
  const handlers = { ...(implementation as unknown as Record<string, grpc.UntypedHandleCall>) };
  for (const method of service.methods) {
    const encodedEntry = definition[method.localName];
    if (encodedEntry !== undefined) {
      definition[method.localName] = {
        ...encodedEntry,
        responseSerialize: passingEncoded(encodedEntry.responseSerialize),
      };
    }
    const entry = definition[method.localName];
    const handler = handlers[method.localName];
    if (entry === undefined || handler === undefined || !hasSingleRequest(method)) continue;
    definition[method.localName] = {
      ...entry,
      requestDeserialize: tolerantDeserializer(entry.requestDeserialize, method.input.typeName),
    };
    handlers[method.localName] = refusingMalformed(method, handler as Parameters<typeof refusingMalformed>[1]);
  }
  server.addService(definition as grpc.ServiceDefinition, handlers);
}
