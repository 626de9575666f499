// The NBD client sends the requests made in one turn (the parts of a split
// read) in one socket write: each write costs the main thread a system call
// and a wake-up of the server, whatever its size.

import { mkdtemp, rm } from "node:fs/promises";
import { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, expect, it, vi } from "vitest";
import { type NbdSource, openNbdSource } from "../src/sources/nbd/index.js";
import { answerCorrectly, type FakeNbdServer, fakeBytes, startFakeNbdServer } from "./helpers/fake-nbd-server.js";

const REQUEST_MAGIC = 0x25609513;
const KiB = 1024;

/** Socket internals the stream machinery calls once per system call. */
interface SocketWrites {
  _write(chunk: Buffer, encoding: string, callback: () => void): void;
  /** Plain buffers when all are buffers (chunks.allBuffers), else { chunk, encoding } entries. */
  _writev(chunks: Array<Buffer | { chunk: Buffer }>, callback: () => void): void;
}

let dir: string;
let server: FakeNbdServer;
let source: NbdSource | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "nbd-batching-"));
  server = await startFakeNbdServer(dir, { size: 1024 * KiB, answer: answerCorrectly });
});

afterEach(async () => {
  vi.restoreAllMocks();
  await source?.close();
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

function isRequest(chunk: Buffer): boolean {
  return chunk.length >= 4 && chunk.readUInt32BE(0) === REQUEST_MAGIC;
}

it("sends the requests of one split read in one socket write", async () => {
  source = await openNbdSource(server.uri, { maxRequestBytes: 64 * KiB });
  const prototype = Socket.prototype as unknown as SocketWrites;
  const write = vi.spyOn(prototype, "_write");
  const writev = vi.spyOn(prototype, "_writev");
  const buffer = Buffer.alloc(256 * KiB);
  await source.read(buffer, 0, buffer.length, 128 * KiB);

  const requestsPerWrite = [
    ...write.mock.calls.map(([chunk]) => (isRequest(chunk) ? 1 : 0)),
    ...writev.mock.calls.map(
      ([chunks]) => chunks.filter((entry) => isRequest(Buffer.isBuffer(entry) ? entry : entry.chunk)).length,
    ),
  ].filter((requests) => requests > 0);
  expect(requestsPerWrite).toEqual([4]);
  expect(server.requests.map((request) => [request.offset, request.length])).toEqual(
    [128, 192, 256, 320].map((offset) => [offset * KiB, 64 * KiB]),
  );
  expect(buffer.equals(fakeBytes(128 * KiB, 256 * KiB))).toBe(true);
});
