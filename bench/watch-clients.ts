// A child process of bench/watchers.ts holding many WatchBackup streams as
// plain HTTP/2 streams (node:http2 with gRPC framing, much lighter than a
// grpc-js client per stream), so that the server is measured alone. Told over
// IPC to open more streams, to wait until every stream has new data, then
// to report when each stream received the status carrying a given speed
// limit (the parent changes the speed and times the delivery; process.hrtime
// is the same monotonic clock in every process of the machine). Arrivals are
// only timestamped as they come; decoding waits for the report.
import { connect, type ClientHttp2Session } from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BackupService, WatchBackupRequestSchema, WatchBackupResponseSchema } from "../gen/vmabackup/v1/backup_pb.js";
import { methodPath } from "../src/wire/message-codec.js";

/** Streams per HTTP/2 connection, as a few clients would open them. */
const STREAMS_PER_SESSION = 500;
const GRPC_FRAME_HEADER = 5;

export type ClientCommand =
  | { readonly type: "open"; readonly address: string; readonly uuid: string; readonly count: number }
  | { readonly type: "arrived"; readonly timeoutMs: number }
  | { readonly type: "receipts"; readonly speedLimit: number; readonly timeoutMs: number }
  | { readonly type: "close" };

export type ClientReply =
  | { readonly type: "opened"; readonly streams: number }
  | { readonly type: "arrived"; readonly waiting: number }
  | { readonly type: "receipts"; readonly nanoseconds: number[]; readonly missing: number };

interface WatchStream {
  /** When the status with each speed limit arrived (process.hrtime.bigint). */
  readonly receipts: Map<number, bigint>;
  /** Data not decoded yet, with its arrival time: decoding waits, so it delays no arrival being timed. */
  arrivals: Array<{ readonly at: bigint; readonly chunk: Buffer }>;
  /** Bytes of an incomplete gRPC frame. */
  pending: Buffer;
}

/** Decodes a stream's arrivals into receipts; returns true when a whole message was decoded. */
function decodeArrivals(watch: WatchStream): boolean {
  let decoded = false;
  for (const { at, chunk } of watch.arrivals.splice(0)) {
    watch.pending = watch.pending.length === 0 ? chunk : Buffer.concat([watch.pending, chunk]);
    while (watch.pending.length >= GRPC_FRAME_HEADER) {
      const length = watch.pending.readUInt32BE(1);
      if (watch.pending.length < GRPC_FRAME_HEADER + length) break;
      const body = watch.pending.subarray(GRPC_FRAME_HEADER, GRPC_FRAME_HEADER + length);
      watch.pending = watch.pending.subarray(GRPC_FRAME_HEADER + length);
      const { status } = fromBinary(WatchBackupResponseSchema, body);
      if (status !== undefined) watch.receipts.set(Number(status.speedLimit), at);
      decoded = true;
    }
  }
  return decoded;
}

const sessions: ClientHttp2Session[] = [];
const streams: WatchStream[] = [];
let openInLastSession = STREAMS_PER_SESSION;

function session(address: string): ClientHttp2Session {
  if (openInLastSession >= STREAMS_PER_SESSION) {
    const opened = connect(`http://${address}`);
    opened.on("error", (error) => console.error(`watch client session: ${error.message}`));
    sessions.push(opened);
    openInLastSession = 0;
  }
  openInLastSession += 1;
  return sessions.at(-1)!;
}

/** Opens one WatchBackup stream; resolves once its first status arrived. */
function openStream(address: string, uuid: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const watch: WatchStream = { receipts: new Map(), arrivals: [], pending: Buffer.alloc(0) };
    const request = session(address).request({
      ":method": "POST",
      ":path": methodPath(BackupService.method.watchBackup),
      "content-type": "application/grpc",
      te: "trailers",
    });
    const message = toBinary(WatchBackupRequestSchema, create(WatchBackupRequestSchema, { uuid }));
    const frame = Buffer.alloc(GRPC_FRAME_HEADER + message.length);
    frame.writeUInt32BE(message.length, 1);
    frame.set(message, GRPC_FRAME_HEADER);
    request.end(frame);
    let first = true;
    request.on("data", (chunk: Buffer) => {
      watch.arrivals.push({ at: process.hrtime.bigint(), chunk });
      if (first && decodeArrivals(watch)) {
        first = false;
        streams.push(watch);
        resolve();
      }
    });
    request.on("error", reject);
    request.on("close", () => {
      if (first) reject(new Error(`watch stream closed before its first status (code ${request.rstCode})`));
    });
  });
}

/**
 * Resolves once every stream has data not decoded yet (or after the
 * timeout). Nothing is decoded here: decoding waits until every client has
 * its data, so that it takes no CPU from the server or another client while
 * deliveries are still being timed.
 */
async function arrived(timeoutMs: number): Promise<ClientReply> {
  const started = Date.now();
  let waiting = streams.filter((watch) => watch.arrivals.length === 0);
  while (waiting.length > 0 && Date.now() < started + timeoutMs) {
    await new Promise((resolve) => setTimeout(resolve, 2));
    waiting = waiting.filter((watch) => watch.arrivals.length === 0);
  }
  return { type: "arrived", waiting: waiting.length };
}

/** When each stream received the status with `speedLimit`, decoding what arrived. */
async function receipts(speedLimit: number, timeoutMs: number): Promise<ClientReply> {
  const started = Date.now();
  for (;;) {
    // Data may end amid a frame: decode what is there, wait for the rest.
    for (const watch of streams) decodeArrivals(watch);
    const waiting = streams.filter((watch) => !watch.receipts.has(speedLimit));
    if (waiting.length === 0 || Date.now() > started + timeoutMs) break;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const nanoseconds: number[] = [];
  let missing = 0;
  for (const watch of streams) {
    const at = watch.receipts.get(speedLimit);
    if (at === undefined) missing += 1;
    else nanoseconds.push(Number(at));
    watch.receipts.delete(speedLimit);
  }
  return { type: "receipts", nanoseconds, missing };
}

process.on("message", async (command: ClientCommand) => {
  if (command.type === "open") {
    // In batches, as clients connecting over some time would.
    for (let opened = 0; opened < command.count; opened += 100) {
      const batch = Math.min(100, command.count - opened);
      await Promise.all(Array.from({ length: batch }, () => openStream(command.address, command.uuid)));
    }
    process.send?.({ type: "opened", streams: streams.length } satisfies ClientReply);
  } else if (command.type === "arrived") {
    process.send?.(await arrived(command.timeoutMs));
  } else if (command.type === "receipts") {
    process.send?.(await receipts(command.speedLimit, command.timeoutMs));
  } else {
    for (const opened of sessions) opened.destroy();
    process.disconnect();
  }
});
