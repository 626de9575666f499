// The transmission phase of one NBD connection: reads and block status
// requests pipelined within a bounded window, replies (simple or structured)
// matched to their request by cookie in any order. A server that breaks the
// protocol, goes silent or hangs up poisons the connection: every pending and
// later request rejects with an NbdError naming its own offset and the cause.

import type { Socket } from "node:net";
import { ByteQueue } from "./byte-queue.js";
import { NbdError, type NbdErrorCode } from "./errors.js";
import { type NbdExportInfo, negotiate, withTimeout } from "./handshake.js";
import {
  CMD_BLOCK_STATUS,
  CMD_DISC,
  CMD_READ,
  errnoName,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_ERROR_BIT,
  REPLY_TYPE_ERROR_OFFSET,
  REPLY_TYPE_NONE,
  REPLY_TYPE_OFFSET_DATA,
  REPLY_TYPE_OFFSET_HOLE,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_BYTES,
  STRUCTURED_REPLY_MAGIC,
} from "./protocol.js";
import { receiveInto } from "./receive-buffers.js";
import { openSocket } from "./transport.js";
import type { NbdAddress } from "./uri.js";

export interface NbdConnectionOptions {
  /** Time to establish the socket. Default 10 s. */
  readonly connectTimeoutMs?: number;
  /** Time for each handshake step (greeting, each option reply). Default 10 s. */
  readonly handshakeTimeoutMs?: number;
  /** Time from sending a request to its last reply chunk. Default 30 s. */
  readonly requestTimeoutMs?: number;
  /** Requests on the wire at once. Default 32. */
  readonly maxInFlightRequests?: number;
  /** Read payload bytes on the wire at once (one request may exceed it alone). Default 64 MiB. */
  readonly maxInFlightBytes?: number;
  /** Time close() waits for the server to hang up after NBD_CMD_DISC. Default 2 s. */
  readonly closeTimeoutMs?: number;
}

export const DEFAULT_NBD_CONNECTION_OPTIONS: Required<NbdConnectionOptions> = {
  connectTimeoutMs: 10_000,
  handshakeTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  maxInFlightRequests: 32,
  maxInFlightBytes: 64 * 1024 * 1024,
  closeTimeoutMs: 2_000,
};

/** One base:allocation extent as the server described it (flags: NBD_STATE_HOLE | NBD_STATE_ZERO). */
export interface NbdBlockStatusExtent {
  readonly offset: number;
  readonly length: number;
  readonly flags: number;
}

interface Request {
  readonly cookie: number;
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  readonly target: Uint8Array | undefined;
  readonly targetOffset: number;
  /** What the request counts against maxInFlightBytes. */
  readonly windowBytes: number;
  /** Byte ranges [start, end) of a structured read received so far, relative to `offset`. */
  readonly ranges: [number, number][];
  readonly extents: NbdBlockStatusExtent[];
  /** The first error chunk the server sent; reported once the reply is done. */
  serverError: NbdError | undefined;
  timer: NodeJS.Timeout | undefined;
  readonly resolve: () => void;
  readonly reject: (error: NbdError) => void;
}

/** Structured block status replies larger than this are refused (2 M extents). */
const MAX_BLOCK_STATUS_REPLY_BYTES = 16 * 1024 * 1024;

function describe(command: number, offset: number, length: number): string {
  const what = command === CMD_READ ? "read" : "block status";
  return `${what} of ${length} bytes at offset ${offset}`;
}

function protocolError(message: string): NbdError {
  return new NbdError("NBD_PROTOCOL", `the server broke the NBD protocol: ${message}`);
}

function cookieHex(header: Buffer, at: number): string {
  return `0x${header.toString("hex", at, at + 8)}`;
}

/** Our cookies are small integers; anything else is not ours. */
function readCookie(header: Buffer, at: number): number {
  return header.readUInt32BE(at) * 0x1_0000_0000 + header.readUInt32BE(at + 4);
}

function readOffset(data: Buffer, at: number): number {
  const value = data.readBigUInt64BE(at);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}

export class NbdConnection {
  readonly info: NbdExportInfo;
  readonly #socket: Socket;
  readonly #queue: ByteQueue;
  readonly #options: Required<NbdConnectionOptions>;
  /** Names the export in error messages. */
  readonly #label: string;
  readonly #pending = new Map<number, Request>();
  readonly #waiting: Request[] = [];
  #inFlightBytes = 0;
  #nextCookie = 1;
  /** Set once the connection is unusable; every later request rejects with it. */
  #failure: NbdError | undefined;
  #closed: Promise<void> | undefined;
  /** close() began: it hangs up itself, after NBD_CMD_DISC. */
  #closing = false;
  /** A #pump is queued for the end of this turn. */
  #pumpQueued = false;

  /** Connects and negotiates; rejects with an NbdError (unreachable, handshake, timeout, export not found). */
  static async open(address: NbdAddress, label: string, options: NbdConnectionOptions = {}): Promise<NbdConnection> {
    const settings = { ...DEFAULT_NBD_CONNECTION_OPTIONS, ...options };
    for (const [name, value] of Object.entries(settings)) {
      if (!(Number.isSafeInteger(value) && value > 0))
        throw new RangeError(`NBD option ${name} must be a positive integer`);
    }
    const queue = new ByteQueue();
    const socket = await openSocket(address, settings.connectTimeoutMs, receiveInto(queue));
    let socketError: Error | undefined;
    socket.on("error", (error) => {
      socketError = error;
    });
    socket.on("close", () => {
      const why =
        socketError === undefined
          ? "the server closed the connection"
          : `the connection failed: ${socketError.message}`;
      queue.fail(new NbdError("NBD_CLOSED", why, { cause: socketError }));
    });
    try {
      const info = await negotiate(socket, queue, address.exportName, settings.handshakeTimeoutMs);
      return new NbdConnection(socket, queue, info, settings, label);
    } catch (error) {
      socket.destroy();
      const nbd = error instanceof NbdError ? error : new NbdError("NBD_HANDSHAKE", String(error), { cause: error });
      const code: NbdErrorCode = nbd.code === "NBD_CLOSED" ? "NBD_HANDSHAKE" : nbd.code;
      throw new NbdError(code, `${label}: ${nbd.message}`, { cause: nbd });
    }
  }

  private constructor(
    socket: Socket,
    queue: ByteQueue,
    info: NbdExportInfo,
    options: Required<NbdConnectionOptions>,
    label: string,
  ) {
    this.#socket = socket;
    this.#queue = queue;
    this.info = info;
    this.#options = options;
    this.#label = label;
    void this.#receiveLoop();
  }

  /** Why the connection is unusable, if it is. */
  get failure(): NbdError | undefined {
    return this.#failure;
  }

  /** Reads [offset, offset + length) into target; length at most the server's maximum block size. */
  read(target: Uint8Array, targetOffset: number, length: number, offset: number): Promise<void> {
    if (length > this.info.maxBlockSize) {
      const what = describe(CMD_READ, offset, length);
      return Promise.reject(
        new NbdError(
          "NBD_OUT_OF_RANGE",
          `${this.#label}: ${what}: above the server's maximum of ${this.info.maxBlockSize}`,
          {
            offset,
          },
        ),
      );
    }
    return this.#submit(CMD_READ, offset, length, target, targetOffset, length).then(() => undefined);
  }

  /** base:allocation status of a range starting at `offset`; may cover less (or a bit more) than asked. */
  async blockStatus(offset: number, length: number): Promise<NbdBlockStatusExtent[]> {
    if (this.info.allocationContextId === undefined) {
      throw new NbdError("NBD_PROTOCOL", `${this.#label}: the server did not agree to base:allocation`);
    }
    return this.#submit(CMD_BLOCK_STATUS, offset, length, undefined, 0, 0);
  }

  /** Sends NBD_CMD_DISC and hangs up; rejects what is still pending. Never throws; idempotent. */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    const healthy = this.#failure === undefined;
    this.#poison(new NbdError("NBD_CLOSED", "the connection was closed by the client"));
    const socket = this.#socket;
    if (socket.destroyed) return;
    const gone = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    if (healthy) {
      socket.write(this.#header(CMD_DISC, this.#nextCookie++, 0, 0));
      socket.end();
    } else {
      socket.destroy();
    }
    try {
      await withTimeout(gone, this.#options.closeTimeoutMs, "the server to hang up");
    } catch {
      socket.destroy();
    }
  }

  #submit(
    command: number,
    offset: number,
    length: number,
    target: Uint8Array | undefined,
    targetOffset: number,
    windowBytes: number,
  ): Promise<NbdBlockStatusExtent[]> {
    return new Promise((resolve, reject) => {
      const extents: NbdBlockStatusExtent[] = [];
      if (this.#failure !== undefined) {
        reject(this.#requestError(command, offset, length, this.#failure));
        return;
      }
      if (!(length > 0 && length <= 0xffff_ffff)) {
        reject(new NbdError("NBD_OUT_OF_RANGE", `${this.#label}: ${describe(command, offset, length)}: bad length`));
        return;
      }
      this.#waiting.push({
        cookie: this.#nextCookie++,
        command,
        offset,
        length,
        target,
        targetOffset,
        windowBytes,
        ranges: [],
        extents,
        serverError: undefined,
        timer: undefined,
        resolve: () => resolve(extents),
        reject,
      });
      this.#queuePump();
    });
  }

  /**
   * Sends the waiting requests at the end of this turn, so that those made
   * together (the parts of one read, the next reads after a reply) leave in
   * one socket write: each write cost the main thread 70-100 µs here.
   */
  #queuePump(): void {
    if (this.#pumpQueued) return;
    this.#pumpQueued = true;
    queueMicrotask(() => {
      this.#pumpQueued = false;
      this.#pump();
    });
  }

  /** Sends waiting requests while the window has room. */
  #pump(): void {
    const { maxInFlightRequests, maxInFlightBytes, requestTimeoutMs } = this.#options;
    let corked = false;
    while (this.#waiting.length > 0 && this.#pending.size < maxInFlightRequests) {
      const request = this.#waiting[0]!;
      if (this.#pending.size > 0 && this.#inFlightBytes + request.windowBytes > maxInFlightBytes) break;
      this.#waiting.shift();
      this.#pending.set(request.cookie, request);
      this.#inFlightBytes += request.windowBytes;
      request.timer = setTimeout(() => {
        const what = describe(request.command, request.offset, request.length);
        this.#poison(new NbdError("NBD_TIMEOUT", `no reply to the ${what} within ${requestTimeoutMs} ms`));
      }, requestTimeoutMs);
      if (!corked) {
        this.#socket.cork();
        corked = true;
      }
      this.#socket.write(this.#header(request.command, request.cookie, request.offset, request.length));
    }
    if (corked) this.#socket.uncork();
  }

  #header(command: number, cookie: number, offset: number, length: number): Buffer {
    const header = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
    header.writeUInt32BE(REQUEST_MAGIC, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(command, 6);
    header.writeUInt32BE(Math.floor(cookie / 0x1_0000_0000), 8);
    header.writeUInt32BE(cookie >>> 0, 12);
    header.writeUInt32BE(Math.floor(offset / 0x1_0000_0000), 16);
    header.writeUInt32BE(offset >>> 0, 20);
    header.writeUInt32BE(length, 24);
    return header;
  }

  async #receiveLoop(): Promise<void> {
    const queue = this.#queue;
    try {
      for (;;) {
        if (queue.length < 4) await queue.wait(4);
        const magic = queue.peekUInt32();
        if (magic === SIMPLE_REPLY_MAGIC) {
          await this.#receiveSimpleReply();
        } else if (magic === STRUCTURED_REPLY_MAGIC && this.info.structuredReplies) {
          await this.#receiveChunk();
        } else {
          throw protocolError(`reply with bad magic 0x${magic.toString(16).padStart(8, "0")}`);
        }
      }
    } catch (error) {
      this.#poison(error instanceof NbdError ? error : protocolError(String(error)));
    }
  }

  #requestFor(header: Buffer, at: number): Request {
    const request = this.#pending.get(readCookie(header, at));
    if (request === undefined) throw protocolError(`reply with unknown handle ${cookieHex(header, at)}`);
    return request;
  }

  async #receiveSimpleReply(): Promise<void> {
    const header = await this.#queue.read(SIMPLE_REPLY_BYTES);
    const request = this.#requestFor(header, 8);
    const error = header.readUInt32BE(4);
    if (error !== 0) {
      request.serverError = this.#serverError(request, error, "", undefined);
    } else if (request.command === CMD_READ) {
      await this.#queue.readInto(request.target!, request.targetOffset, request.length);
      request.ranges.push([0, request.length]);
    } else {
      throw protocolError(
        `simple reply without error to the ${describe(request.command, request.offset, request.length)}`,
      );
    }
    this.#complete(request);
  }

  async #receiveChunk(): Promise<void> {
    const queue = this.#queue;
    const header = await queue.read(STRUCTURED_REPLY_BYTES);
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const request = this.#requestFor(header, 8);
    const length = header.readUInt32BE(16);
    const what = describe(request.command, request.offset, request.length);
    const expect = (ok: boolean, why: string): void => {
      if (!ok) throw protocolError(`${why} in the reply to the ${what}`);
    };
    if (type === REPLY_TYPE_NONE) {
      expect(length === 0, `NBD_REPLY_TYPE_NONE with ${length} bytes of payload`);
      expect((flags & REPLY_FLAG_DONE) !== 0, "NBD_REPLY_TYPE_NONE without the DONE flag");
    } else if (type === REPLY_TYPE_OFFSET_DATA) {
      expect(request.command === CMD_READ, "NBD_REPLY_TYPE_OFFSET_DATA");
      expect(length > 8, `NBD_REPLY_TYPE_OFFSET_DATA of ${length} bytes`);
      const at = readOffset(await queue.read(8), 0);
      const bytes = length - 8;
      this.#expectInside(request, at, bytes, "data");
      await queue.readInto(request.target!, request.targetOffset + (at - request.offset), bytes);
      request.ranges.push([at - request.offset, at - request.offset + bytes]);
    } else if (type === REPLY_TYPE_OFFSET_HOLE) {
      expect(request.command === CMD_READ, "NBD_REPLY_TYPE_OFFSET_HOLE");
      expect(length === 12, `NBD_REPLY_TYPE_OFFSET_HOLE of ${length} bytes`);
      const payload = await queue.read(12);
      const at = readOffset(payload, 0);
      const bytes = payload.readUInt32BE(8);
      expect(bytes > 0, "an empty hole");
      this.#expectInside(request, at, bytes, "hole");
      const start = request.targetOffset + (at - request.offset);
      request.target!.fill(0, start, start + bytes);
      request.ranges.push([at - request.offset, at - request.offset + bytes]);
    } else if (type === REPLY_TYPE_BLOCK_STATUS) {
      expect(request.command === CMD_BLOCK_STATUS, "NBD_REPLY_TYPE_BLOCK_STATUS");
      expect(length >= 12 && (length - 4) % 8 === 0, `NBD_REPLY_TYPE_BLOCK_STATUS of ${length} bytes`);
      expect(length <= MAX_BLOCK_STATUS_REPLY_BYTES, `NBD_REPLY_TYPE_BLOCK_STATUS of ${length} bytes (too long)`);
      expect(request.extents.length === 0, "a second NBD_REPLY_TYPE_BLOCK_STATUS chunk");
      this.#parseExtents(request, await queue.read(length), expect);
    } else if ((type & REPLY_TYPE_ERROR_BIT) !== 0) {
      expect(length >= 6, `error chunk of ${length} bytes`);
      const payload = await queue.read(length);
      const error = payload.readUInt32BE(0);
      const messageBytes = payload.readUInt16BE(4);
      expect(error !== 0, "an error chunk with error value 0");
      let errorOffset: number | undefined;
      if (type === REPLY_TYPE_ERROR_OFFSET) {
        expect(length === 6 + messageBytes + 8, `NBD_REPLY_TYPE_ERROR_OFFSET of ${length} bytes`);
        errorOffset = readOffset(payload, 6 + messageBytes);
        this.#expectInside(request, errorOffset, 1, "error offset");
      } else {
        // Unknown error types still carry error and message first (spec); the rest is skipped.
        expect(length >= 6 + messageBytes, `error chunk with a message longer than the chunk`);
      }
      const message = payload.toString("utf8", 6, 6 + messageBytes);
      request.serverError ??= this.#serverError(request, error, message, errorOffset);
    } else {
      throw protocolError(`unknown reply chunk type ${type} in the reply to the ${what}`);
    }
    if ((flags & REPLY_FLAG_DONE) !== 0) this.#complete(request);
  }

  #parseExtents(request: Request, payload: Buffer, expect: (ok: boolean, why: string) => void): void {
    const contextId = payload.readUInt32BE(0);
    expect(contextId === this.info.allocationContextId, `block status for unknown meta context ${contextId}`);
    const end = request.offset + request.length;
    let at = request.offset;
    for (let i = 4; i < payload.length && at < end; i += 8) {
      const length = payload.readUInt32BE(i);
      expect(length > 0, "an empty extent");
      // The last extent may reach past the request; what is past it is not asked for.
      const clipped = Math.min(length, end - at);
      request.extents.push({ offset: at, length: clipped, flags: payload.readUInt32BE(i + 4) });
      at += clipped;
    }
  }

  #expectInside(request: Request, at: number, bytes: number, what: string): void {
    if (at < request.offset || at + bytes > request.offset + request.length) {
      throw protocolError(
        `${what} at offset ${at} (${bytes} bytes) lies beyond the ${describe(request.command, request.offset, request.length)}`,
      );
    }
  }

  #serverError(request: Request, error: number, message: string, at: number | undefined): NbdError {
    const where = at === undefined ? "" : ` at offset ${at}`;
    const said = message === "" ? "" : `: ${message}`;
    return new NbdError(
      "NBD_SERVER_ERROR",
      `${this.#label}: ${describe(request.command, request.offset, request.length)} failed: server error ${errnoName(error)}${where}${said}`,
      { offset: at ?? request.offset },
    );
  }

  /** The reply to `request` is complete: check it, settle it, make room in the window. */
  #complete(request: Request): void {
    this.#pending.delete(request.cookie);
    clearTimeout(request.timer);
    this.#inFlightBytes -= request.windowBytes;
    if (request.serverError !== undefined) {
      request.reject(request.serverError);
    } else {
      const what = describe(request.command, request.offset, request.length);
      if (request.command === CMD_READ) {
        const gap = firstGap(request.ranges, request.length);
        if (gap !== undefined) {
          const error = protocolError(
            `${gap.overlap ? "overlapping chunks" : "no data"} at offset ${request.offset + gap.at} in the reply to the ${what}`,
          );
          request.reject(this.#requestError(request.command, request.offset, request.length, error));
          this.#poison(error);
          return;
        }
      } else if (request.extents.length === 0) {
        const error = protocolError(`no extents in the reply to the ${what}`);
        request.reject(this.#requestError(request.command, request.offset, request.length, error));
        this.#poison(error);
        return;
      }
      request.resolve();
    }
    this.#queuePump();
  }

  #requestError(command: number, offset: number, length: number, cause: NbdError): NbdError {
    return new NbdError(cause.code, `${this.#label}: ${describe(command, offset, length)} failed: ${cause.message}`, {
      offset,
      cause,
    });
  }

  /** Makes the connection unusable: rejects every request, drops the socket (unless close() hangs up itself). */
  #poison(cause: NbdError): void {
    if (this.#failure !== undefined) return;
    this.#failure = cause;
    const requests = [...this.#pending.values(), ...this.#waiting];
    this.#pending.clear();
    this.#waiting.length = 0;
    this.#inFlightBytes = 0;
    for (const request of requests) {
      clearTimeout(request.timer);
      request.reject(this.#requestError(request.command, request.offset, request.length, cause));
    }
    this.#queue.fail(cause);
    if (!this.#closing) this.#socket.destroy();
  }
}

/** The first byte of [0, length) not covered exactly once by `ranges`, if any. */
function firstGap(ranges: [number, number][], length: number): { at: number; overlap: boolean } | undefined {
  const sorted = ranges.length > 1 ? [...ranges].sort((a, b) => a[0] - b[0]) : ranges;
  let at = 0;
  for (const [start, end] of sorted) {
    if (start < at) return { at: start, overlap: true };
    if (start > at) return { at, overlap: false };
    at = end;
  }
  return at === length ? undefined : { at, overlap: false };
}
