// A typed grpc-js client for a protobuf-es v2 service descriptor: unary
// methods return a Promise, server-streaming methods an AsyncIterable that
// cancels the call when the consumer stops early. Used by the CLI and tests.
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import type { DescMessage, DescMethod, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { messageDeserializer, messageSerializer, methodPath } from "../wire/message-codec.js";

type MethodShape = GenServiceMethods[string];

export interface CallOptions {
  /** Absolute deadline of the call (a Date or milliseconds since the epoch). */
  readonly deadline?: grpc.Deadline;
  readonly metadata?: grpc.Metadata;
  /** Aborting cancels the call; the caller then sees status CANCELLED. */
  readonly signal?: AbortSignal;
}

export type UnaryMethod<M extends MethodShape> = (
  request: MessageInitShape<M["input"]>,
  options?: CallOptions,
) => Promise<MessageShape<M["output"]>>;

/**
 * The call starts when iteration starts. Leaving the loop (break, throw)
 * cancels the call; to stop a stream that is waiting for its next message,
 * abort `options.signal` (an async generator's return() would wait for it).
 */
export type ServerStreamingMethod<M extends MethodShape> = (
  request: MessageInitShape<M["input"]>,
  options?: CallOptions,
) => AsyncIterable<MessageShape<M["output"]>>;

/** Methods the client supports: unary and server streaming. */
type SupportedKeys<T extends GenServiceMethods> = {
  [K in keyof T]: T[K]["methodKind"] extends "unary" | "server_streaming" ? K : never;
}[keyof T];

export interface ClientConnection {
  /** Resolves once the channel is connected; rejects after the deadline. */
  waitForReady(deadline: grpc.Deadline): Promise<void>;
  /** Closes the channel; calls still running are cancelled. */
  close(): void;
}

export type ServiceClient<T extends GenServiceMethods> = {
  readonly [K in SupportedKeys<T>]: T[K]["methodKind"] extends "unary"
    ? UnaryMethod<T[K]>
    : ServerStreamingMethod<T[K]>;
} & ClientConnection;

/**
 * Creates a client for `service` on `address` ("host:port"). Without
 * credentials the channel is plaintext.
 */
export function createClient<T extends GenServiceMethods>(
  service: GenService<T>,
  address: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  channelOptions: grpc.ChannelOptions = {},
): ServiceClient<T> {
  const channel = new grpc.Client(address, credentials, channelOptions);
  const connection: ClientConnection = {
    waitForReady: (deadline) =>
      new Promise((resolve, reject) => {
        channel.waitForReady(deadline, (error) => (error ? reject(error) : resolve()));
      }),
    close: () => channel.close(),
  };
  const client: Record<string, unknown> = { ...connection };
  for (const method of service.methods) {
    if (method.localName in client) {
      throw new Error(`method ${method.name} clashes with a client property`);
    }
    if (method.methodKind === "unary") {
      client[method.localName] = unaryMethod(channel, method);
    } else if (method.methodKind === "server_streaming") {
      client[method.localName] = serverStreamingMethod(channel, method);
    }
  }
  return client as ServiceClient<T>;
}

function callOptionsOf(options: CallOptions): grpc.CallOptions {
  return options.deadline === undefined ? {} : { deadline: options.deadline };
}

/** Cancels `call` when `signal` aborts; returns the function that stops listening. */
function cancelOnAbort(signal: AbortSignal | undefined, call: { cancel(): void }): () => void {
  if (signal === undefined) return () => {};
  if (signal.aborted) {
    call.cancel();
    return () => {};
  }
  const onAbort = (): void => call.cancel();
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

function unaryMethod(channel: grpc.Client, method: DescMethod): UnaryMethod<MethodShape> {
  const path = methodPath(method);
  const serialize = messageSerializer(method.input);
  const deserialize = messageDeserializer(method.output);
  return (request, options = {}) =>
    new Promise((resolve, reject) => {
      let stopListening = (): void => {};
      const call = channel.makeUnaryRequest(
        path,
        serialize,
        deserialize,
        create(method.input, request),
        options.metadata ?? new grpc.Metadata(),
        callOptionsOf(options),
        (error, response) => {
          stopListening();
          if (error) reject(error);
          else if (response === undefined) reject(new Error(`${method.name}: empty response`));
          else resolve(response);
        },
      );
      stopListening = cancelOnAbort(options.signal, call);
    });
}

function serverStreamingMethod(channel: grpc.Client, method: DescMethod): ServerStreamingMethod<MethodShape> {
  const path = methodPath(method);
  const serialize = messageSerializer(method.input);
  const deserialize = messageDeserializer(method.output);
  // A generator, so the call starts when iteration starts and a stream that
  // is never iterated costs nothing.
  return async function* (request, options = {}) {
    const call = channel.makeServerStreamRequest(
      path,
      serialize,
      deserialize,
      create(method.input, request),
      options.metadata ?? new grpc.Metadata(),
      callOptionsOf(options),
    );
    const stopListening = cancelOnAbort(options.signal, call);
    let ended = false;
    try {
      for await (const message of call) yield message as MessageShape<DescMessage>;
      ended = true;
    } finally {
      stopListening();
      if (!ended) {
        // The consumer stopped early (break, throw or a stream error). The
        // CANCELLED status we cause arrives later as an 'error' event on a
        // stream nobody reads any more; it must not become an uncaught error.
        call.on("error", () => {});
        call.cancel();
      }
    }
  };
}

/** The client type of a generated service, e.g. ClientOf<typeof BackupService>. */
export type ClientOf<S> = S extends GenService<infer T> ? ServiceClient<T> : never;
