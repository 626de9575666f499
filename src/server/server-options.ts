// grpc-js server settings. Watch streams may stay open for hours, often with
// nothing to send while no job runs, so the server pings idle peers to find
// dead connections instead of holding their streams forever.
import type * as grpc from "@grpc/grpc-js";
import { LARGEST_VALID_REQUEST_BYTES } from "./message-limits.js";
import type { RequestReadGateOptions } from "./request-read-gate.js";

/**
 * The largest request read: the largest valid Backup request (~1.5 MiB),
 * rounded up to 64 KiB. Larger ones end RESOURCE_EXHAUSTED from their
 * length prefix, unread.
 */
export const MAX_RECEIVE_MESSAGE_BYTES = Math.ceil(LARGEST_VALID_REQUEST_BYTES / 65536) * 65536;

/**
 * At most 8 requests are read into memory at once (8 x ~1.5 MiB, a few
 * copies each); a request must arrive within 10 s of its read starting
 * (150 KB/s for the largest).
 */
export const REQUEST_READ_LIMITS: RequestReadGateOptions = { maxConcurrentReads: 8, readTimeoutMs: 10_000 };

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
  // No channelz service is offered, so its bookkeeping on every call and
  // message (a Date per message sent, per-call trackers) serves nobody.
  "grpc.enable_channelz": 0,
};
