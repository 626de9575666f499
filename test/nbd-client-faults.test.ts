// The NBD client against a server that misbehaves on purpose (written here
// with node:net): every fault is an NbdError naming the offset, within the
// timeout, and a broken connection rejects everything after it at once.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdError, type NbdSource, openNbdSource } from "../src/sources/nbd/index.js";
import {
  ALLOCATION_CONTEXT_ID,
  answerCorrectly,
  dataChunk,
  type FakeNbdServer,
  type FakeRequest,
  type FakeServerOptions,
  fakeBytes,
  structuredChunk,
  startFakeNbdServer,
} from "./helpers/fake-nbd-server.js";

const SIZE = 1024 * 1024;
const TIMEOUTS = { connectTimeoutMs: 1000, handshakeTimeoutMs: 300, requestTimeoutMs: 400, closeTimeoutMs: 300 };

let dir: string;
const servers: FakeNbdServer[] = [];
const sources: NbdSource[] = [];

async function fake(
  answer: FakeServerOptions["answer"],
  greeting?: FakeServerOptions["greeting"],
): Promise<FakeNbdServer> {
  const server = await startFakeNbdServer(dir, { size: SIZE, answer, ...(greeting ? { greeting } : {}) });
  servers.push(server);
  return server;
}

async function open(server: FakeNbdServer, options: Parameters<typeof openNbdSource>[1] = {}): Promise<NbdSource> {
  const source = await openNbdSource(server.uri, { ...TIMEOUTS, ...options });
  sources.push(source);
  return source;
}

/** Awaits a rejection; checks code and message; returns the error and how long it took. */
async function failure(work: Promise<unknown>, code: string, text: RegExp): Promise<{ error: NbdError; ms: number }> {
  const started = Date.now();
  const error = await work.then(
    () => {
      throw new Error("expected a rejection");
    },
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(NbdError);
  expect((error as NbdError).code).toBe(code);
  expect((error as NbdError).message).toMatch(text);
  return { error: error as NbdError, ms: Date.now() - started };
}

function read(source: NbdSource, offset: number, length = 4096): Promise<void> {
  return source.read(Buffer.alloc(length), 0, length, offset);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "nbd-faults-"));
});

afterAll(async () => {
  await Promise.all(sources.map((source) => source.close()));
  await Promise.all(servers.map((server) => server.close()));
  await rm(dir, { recursive: true, force: true });
});

describe("NBD handshake faults", () => {
  it("times out a server that never greets", async () => {
    const server = await fake(answerCorrectly, "silent");
    const { ms } = await failure(openNbdSource(server.uri, TIMEOUTS), "NBD_TIMEOUT", /300 ms.*server greeting/);
    expect(ms).toBeLessThan(1500);
  });

  it("times out a server that greets and then ignores the options", async () => {
    const server = await fake(answerCorrectly, "deaf");
    const { ms } = await failure(openNbdSource(server.uri, TIMEOUTS), "NBD_TIMEOUT", /NBD_OPT_STRUCTURED_REPLY reply/);
    expect(ms).toBeLessThan(1500);
  });

  it("refuses an oldstyle server and one that hangs up", async () => {
    await failure(openNbdSource((await fake(answerCorrectly, "oldstyle")).uri, TIMEOUTS), "NBD_HANDSHAKE", /oldstyle/);
    await failure(openNbdSource((await fake(answerCorrectly, "hang-up")).uri, TIMEOUTS), "NBD_HANDSHAKE", /closed/);
  });
});

describe("NBD transmission faults", () => {
  it("pipelines within the window, matches replies sent in reverse order, and says goodbye with NBD_CMD_DISC", async () => {
    let held: [FakeRequest, Socket][] = [];
    let outstanding = 0;
    let mostOutstanding = 0;
    const server = await fake((request, socket) => {
      held.push([request, socket]);
      outstanding++;
      mostOutstanding = Math.max(mostOutstanding, outstanding);
      if (held.length === 1) {
        setTimeout(() => {
          const batch = held.reverse();
          held = [];
          for (const [r, s] of batch) {
            outstanding--;
            answerCorrectly(r, s);
          }
        }, 5);
      }
    });
    const source = await open(server, { maxInFlightRequests: 4, maxRequestBytes: 4096 });
    const buffer = Buffer.alloc(24 * 4096);
    await source.read(buffer, 0, buffer.length, 8192);
    expect(buffer.equals(fakeBytes(8192, buffer.length))).toBe(true);
    expect(mostOutstanding).toBe(4);
    expect(await source.mapExtents(0, SIZE)).toEqual([{ offset: 0, length: SIZE, zero: false }]);

    const byBytes = await open(server, { maxInFlightBytes: 3 * 4096, maxRequestBytes: 4096 });
    mostOutstanding = 0;
    await byBytes.read(buffer, 0, buffer.length, 0);
    expect(mostOutstanding).toBe(3);

    const before = server.requests.length;
    await source.close();
    expect(server.requests.length).toBe(before + 1);
    expect(server.requests.at(-1)?.type).toBe(2);
  });

  it("rejects a reply with a handle nobody asked for, naming the offset, then every later call at once", async () => {
    const source = await open(
      await fake((request, socket) => {
        const wrong = Buffer.from(request.cookie);
        wrong[7] = (wrong[7] ?? 0) ^ 0xff;
        socket.write(dataChunk(1, wrong, request.offset, fakeBytes(request.offset, request.length)));
      }),
    );
    await failure(read(source, 4096), "NBD_PROTOCOL", /offset 4096.*unknown handle/);
    const { ms } = await failure(read(source, 0), "NBD_PROTOCOL", /offset 0 .*unknown handle/);
    expect(ms).toBeLessThan(50);
  });

  it("rejects a reply with a bad magic", async () => {
    const source = await open(await fake((_request, socket) => socket.write(Buffer.alloc(20, 0xde))));
    await failure(read(source, 12_288), "NBD_PROTOCOL", /offset 12288.*bad magic 0xdededede/);
  });

  it("rejects every pending read when the server drops the connection mid-reply", async () => {
    const source = await open(
      await fake((request, socket) => {
        const whole = dataChunk(1, request.cookie, request.offset, fakeBytes(request.offset, request.length));
        socket.write(whole.subarray(0, whole.length / 2));
        socket.destroy();
      }),
    );
    const reads = [0, 65_536, 131_072].map((offset) =>
      failure(read(source, offset), "NBD_CLOSED", new RegExp(`offset ${offset}\\b.*closed`)),
    );
    for (const { ms } of await Promise.all(reads)) expect(ms).toBeLessThan(TIMEOUTS.requestTimeoutMs);
  });

  it("times out a server that never answers", async () => {
    const source = await open(await fake(() => {}));
    const { ms } = await failure(read(source, 40_960), "NBD_TIMEOUT", /offset 40960.*400 ms/);
    expect(ms).toBeGreaterThanOrEqual(TIMEOUTS.requestTimeoutMs - 20);
    expect(ms).toBeLessThan(2000);
  });

  it("rejects data beyond the request and a reply that ends short", async () => {
    const beyond = await open(
      await fake((request, socket) =>
        socket.write(dataChunk(1, request.cookie, request.offset + 100, fakeBytes(0, request.length))),
      ),
    );
    await failure(read(beyond, 8192), "NBD_PROTOCOL", /offset 8192.*beyond/);
    const short = await open(
      await fake((request, socket) => {
        socket.write(dataChunk(0, request.cookie, request.offset, fakeBytes(request.offset, request.length / 2)));
        socket.write(structuredChunk(1, 0, request.cookie, Buffer.alloc(0)));
      }),
    );
    await failure(read(short, 8192), "NBD_PROTOCOL", /no data at offset 10240.*offset 8192/);
  });

  it("reports an error chunk with its offset and message; the connection stays usable", async () => {
    let broken = true;
    const source = await open(
      await fake((request, socket) => {
        if (!broken) return answerCorrectly(request, socket);
        const message = Buffer.from("bad sector");
        const payload = Buffer.alloc(6 + message.length + 8);
        payload.writeUInt32BE(5, 0);
        payload.writeUInt16BE(message.length, 4);
        message.copy(payload, 6);
        payload.writeBigUInt64BE(BigInt(request.offset + 100), 6 + message.length);
        socket.write(structuredChunk(1, 0x8002, request.cookie, payload));
      }),
    );
    const { error } = await failure(
      read(source, 16_384),
      "NBD_SERVER_ERROR",
      /offset 16384.*EIO at offset 16484: bad sector/,
    );
    expect(error.offset).toBe(16_484);
    broken = false;
    const buffer = Buffer.alloc(4096);
    await source.read(buffer, 0, 4096, 16_384);
    expect(buffer.equals(fakeBytes(16_384, 4096))).toBe(true);
  });

  it("rejects block status for a context that was not negotiated", async () => {
    const source = await open(
      await fake((request, socket) => {
        const payload = Buffer.alloc(12);
        payload.writeUInt32BE(ALLOCATION_CONTEXT_ID + 1, 0);
        payload.writeUInt32BE(request.length, 4);
        socket.write(structuredChunk(1, 5, request.cookie, payload));
      }),
    );
    await failure(source.mapExtents(65_536, 4096), "NBD_PROTOCOL", /offset 65536.*unknown meta context/);
  });

  it("maps NBD_STATE_HOLE alone as data, NBD_STATE_ZERO as zero, merges neighbours and clips the last extent", async () => {
    const descriptors: [number, number][] = [
      [4096, 1], // hole, not promised to read as zero
      [4096, 0],
      [8192, 3], // hole and zero
      [4096, 2], // allocated zeros
      [1 << 20, 0], // reaches past the request
    ];
    const source = await open(
      await fake((request, socket) => {
        const payload = Buffer.alloc(4 + 8 * descriptors.length);
        payload.writeUInt32BE(ALLOCATION_CONTEXT_ID, 0);
        descriptors.forEach(([length, flags], i) => {
          payload.writeUInt32BE(length, 4 + 8 * i);
          payload.writeUInt32BE(flags, 8 + 8 * i);
        });
        socket.write(structuredChunk(1, 5, request.cookie, payload));
      }),
    );
    expect(await source.mapExtents(0, 32_768)).toEqual([
      { offset: 0, length: 8192, zero: false },
      { offset: 8192, length: 12_288, zero: true },
      { offset: 20_480, length: 12_288, zero: false },
    ]);
  });

  it("leaves no timer or socket behind after failures and close()", async () => {
    const count = (): number =>
      process.getActiveResourcesInfo().filter((kind) => kind === "Timeout" || kind === "PipeWrap").length;
    const server = await fake(() => {});
    const baseline = count();
    const source = await openNbdSource(server.uri, TIMEOUTS);
    const timedOut = failure(read(source, 0), "NBD_TIMEOUT", /400 ms/);
    await timedOut;
    const again = await openNbdSource(server.uri, TIMEOUTS);
    const closed = [0, 4096, 8192].map((offset) => failure(read(again, offset), "NBD_CLOSED", /closed by the client/));
    await Promise.all([source.close(), again.close()]);
    await Promise.all(closed);
    const healthy = await openNbdSource((await fake(answerCorrectly)).uri, TIMEOUTS);
    const afterFake = count();
    await read(healthy, 0);
    await healthy.close();
    await new Promise((resolve) => setImmediate(resolve));
    expect(count()).toBeLessThanOrEqual(Math.min(baseline, afterFake));
  });
});
