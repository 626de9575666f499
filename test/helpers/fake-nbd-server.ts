// A tiny NBD server written for tests, independent of the client's code: it
// negotiates like a real fixed-newstyle server (structured replies,
// base:allocation, NBD_OPT_GO) and then lets each test answer requests any way
// it likes, including the ways a broken server would.

import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";

export interface FakeRequest {
  readonly type: number;
  /** The request's 8-byte handle, to echo (or to garble). */
  readonly cookie: Buffer;
  readonly offset: number;
  readonly length: number;
}

/**
 * What the server does after accepting: talk normally, stay silent, greet and
 * then ignore every option, greet as an oldstyle server, or hang up.
 */
export type FakeGreeting = "normal" | "silent" | "deaf" | "oldstyle" | "hang-up";

export interface FakeServerOptions {
  readonly size: number;
  readonly greeting?: FakeGreeting;
  /** Answers one request (not NBD_CMD_DISC); write to the socket with the encoders below. */
  readonly answer: (request: FakeRequest, socket: Socket) => void;
}

export interface FakeNbdServer {
  readonly uri: string;
  /** Requests received, NBD_CMD_DISC included. */
  readonly requests: FakeRequest[];
  close(): Promise<void>;
}

export const ALLOCATION_CONTEXT_ID = 7;

export function structuredChunk(flags: number, type: number, cookie: Buffer, payload: Buffer): Buffer {
  const header = Buffer.alloc(20);
  header.writeUInt32BE(0x668e33ef, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  cookie.copy(header, 8);
  header.writeUInt32BE(payload.length, 16);
  return Buffer.concat([header, payload]);
}

/** An NBD_REPLY_TYPE_OFFSET_DATA chunk (flags 1 = DONE). */
export function dataChunk(flags: number, cookie: Buffer, offset: number, data: Buffer): Buffer {
  const payload = Buffer.alloc(8 + data.length);
  payload.writeBigUInt64BE(BigInt(offset), 0);
  data.copy(payload, 8);
  return structuredChunk(flags, 1, cookie, payload);
}

/** Bytes the fake export holds: the low byte of each offset. */
export function fakeBytes(offset: number, length: number): Buffer {
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i++) bytes[i] = (offset + i) & 0xff;
  return bytes;
}

/** The answer a correct server gives: all data in one chunk, or one extent of data. */
export function answerCorrectly(request: FakeRequest, socket: Socket): void {
  if (request.type === 0) {
    socket.write(dataChunk(1, request.cookie, request.offset, fakeBytes(request.offset, request.length)));
  } else {
    const payload = Buffer.alloc(12);
    payload.writeUInt32BE(ALLOCATION_CONTEXT_ID, 0);
    payload.writeUInt32BE(request.length, 4);
    socket.write(structuredChunk(1, 5, request.cookie, payload));
  }
}

function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(20);
  header.writeBigUInt64BE(0x3e889045565a9n, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(type, 12);
  header.writeUInt32BE(data.length, 16);
  return Buffer.concat([header, data]);
}

function serve(socket: Socket, options: FakeServerOptions, requests: FakeRequest[]): void {
  socket.on("error", () => {});
  const greeting = options.greeting ?? "normal";
  if (greeting === "silent") return;
  if (greeting === "hang-up") {
    socket.destroy();
    return;
  }
  const hello = Buffer.alloc(18);
  hello.write("NBDMAGIC", 0, "latin1");
  if (greeting === "oldstyle") {
    hello.writeBigUInt64BE(0x00420281861253n, 8);
    socket.write(hello);
    return;
  }
  hello.write("IHAVEOPT", 8, "latin1");
  hello.writeUInt16BE(3, 16); // fixed newstyle, no zeroes
  socket.write(hello);
  if (greeting === "deaf") return;

  let pending = Buffer.alloc(0);
  let phase: "flags" | "options" | "transmission" = "flags";
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      if (phase === "flags") {
        if (pending.length < 4) return;
        pending = pending.subarray(4);
        phase = "options";
      } else if (phase === "options") {
        if (pending.length < 16) return;
        const option = pending.readUInt32BE(8);
        const length = pending.readUInt32BE(12);
        if (pending.length < 16 + length) return;
        pending = pending.subarray(16 + length);
        if (option === 8) {
          socket.write(optionReply(option, 1));
        } else if (option === 10) {
          const context = Buffer.concat([Buffer.alloc(4), Buffer.from("base:allocation")]);
          context.writeUInt32BE(ALLOCATION_CONTEXT_ID, 0);
          socket.write(Buffer.concat([optionReply(option, 4, context), optionReply(option, 1)]));
        } else if (option === 7) {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(0, 0);
          info.writeBigUInt64BE(BigInt(options.size), 2);
          info.writeUInt16BE(1 | 2, 10); // has flags, read-only
          socket.write(Buffer.concat([optionReply(option, 3, info), optionReply(option, 1)]));
          phase = "transmission";
        } else {
          socket.write(optionReply(option, 0x80000001));
        }
      } else {
        if (pending.length < 28) return;
        const request: FakeRequest = {
          type: pending.readUInt16BE(6),
          cookie: Buffer.from(pending.subarray(8, 16)),
          offset: Number(pending.readBigUInt64BE(16)),
          length: pending.readUInt32BE(24),
        };
        pending = pending.subarray(28);
        requests.push(request);
        if (request.type === 2) {
          socket.end();
          return;
        }
        options.answer(request, socket);
      }
    }
  });
}

/** Starts the fake server on a unix socket in `dir`. */
export async function startFakeNbdServer(dir: string, options: FakeServerOptions): Promise<FakeNbdServer> {
  const socketPath = join(dir, `fake-${process.pid}-${Math.random().toString(36).slice(2)}.sock`);
  const requests: FakeRequest[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    serve(socket, options, requests);
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    uri: `nbd+unix:///?socket=${socketPath}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
