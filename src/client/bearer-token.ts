// Sends a bearer token on every call: the client half of the server's
// bearer-token authentication (src/server/auth.ts).
import * as grpc from "@grpc/grpc-js";
import { AUTHORIZATION_KEY } from "../wire/metadata-keys.js";

/** A client interceptor that sends `token` as a bearer token on every call. */
export function bearerTokenInterceptor(token: string): grpc.Interceptor {
  const value = `Bearer ${token}`;
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set(AUTHORIZATION_KEY, value);
        next(metadata, listener);
      },
    });
}
