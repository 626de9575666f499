// grpc-js server settings. Watch streams may stay open for hours, often with
// nothing to send while no job runs, so the server pings idle peers to find
// dead connections instead of holding their streams forever.
import type * as grpc from "@grpc/grpc-js";

/** Requests are small except for configs (at most 256 x 64 KiB). */
export const MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024 * 1024;

export const SERVER_CHANNEL_OPTIONS: grpc.ServerOptions = {
  // Ping a connection after 30 s without activity; drop it when the ping is
  // not answered within 10 s.
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000,
  // For gRPC implementations that police pings (grpc-js does not): allow
  // keepalive pings on connections without calls and from clients that ping
  // every 10 s or slower, so long-lived watchers are never sent GOAWAY.
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.http2.min_ping_interval_without_data_ms": 10_000,
  "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES,
};
