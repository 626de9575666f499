// grpc-js answers a call to a method it has no handler for with UNIMPLEMENTED
// before any server interceptor runs, so without a token an unknown method
// answered UNIMPLEMENTED and an existing one UNAUTHENTICATED: anyone could
// list what the server offers by trying names. Here every unknown path gets
// a handler of its own, which answers UNIMPLEMENTED only after the
// interceptors (the bearer-token check of auth.ts first) let the call
// through.
//
// grpc-js has no public catch-all, so this wraps Server#_retrieveHandler, an
// internal of the pinned grpc-js 1.14; if an upgrade renames it, the server
// refuses to start (and test/safety-auth.test.ts says why) rather than leak.
import * as grpc from "@grpc/grpc-js";

type HandlerLookup = (this: grpc.Server, path: string) => unknown;

/** The message grpc-js itself sends for an unknown method. */
export function unimplementedMessage(path: string): string {
  return `The server does not implement the method ${path}`;
}

/**
 * A handler for a path nothing is registered at. Bidirectional, so that it
 * answers as soon as the call is let through, without waiting for a request
 * message that a streaming client may never half-close.
 */
function unknownMethodHandler(path: string): object {
  const identity = (value: Buffer): Buffer => value;
  const func: grpc.handleBidiStreamingCall<Buffer, Buffer> = (call) => {
    call.emit("error", { code: grpc.status.UNIMPLEMENTED, details: unimplementedMessage(path) });
  };
  return { func, serialize: identity, deserialize: identity, type: "bidi", path };
}

/**
 * Makes calls to unknown methods pass through `server`'s interceptors first.
 * Returns whether a path names a registered method.
 */
export function routeUnknownMethodsThroughInterceptors(server: grpc.Server): (path: string) => boolean {
  const internals = server as unknown as { _retrieveHandler?: HandlerLookup };
  const lookup = internals._retrieveHandler;
  if (typeof lookup !== "function") {
    throw new Error(
      "grpc-js has no Server#_retrieveHandler any more: unknown methods would bypass auth (see " +
        "src/server/unknown-methods.ts)",
    );
  }
  internals._retrieveHandler = function retrieveHandler(this: grpc.Server, path: string): unknown {
    return lookup.call(this, path) ?? unknownMethodHandler(path);
  };
  return (path) => lookup.call(server, path) != null;
}
