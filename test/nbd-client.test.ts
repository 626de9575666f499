// The NBD client against real servers: nbdkit (pattern, data, sparse-random,
// memory, and its error and delay filters) and qemu-nbd (raw and a sparse
// qcow2), compared with the bytes nbdcopy / qemu-img produce from the same export.

import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SourceExtent } from "../src/sources/disk-source.js";
import { NbdError, type NbdSource, openNbdSource } from "../src/sources/nbd/index.js";
import { type NbdServerProcess, startNbdkit, startNbdkitTcp, startQemuNbd } from "./helpers/nbd-servers.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

let dir: string;
const servers: NbdServerProcess[] = [];
const sources: NbdSource[] = [];

async function nbdkit(...args: string[]): Promise<NbdServerProcess> {
  const server = await startNbdkit(dir, args);
  servers.push(server);
  return server;
}

async function qemuNbd(...args: string[]): Promise<NbdServerProcess> {
  const server = await startQemuNbd(dir, args);
  servers.push(server);
  return server;
}

async function open(...args: Parameters<typeof openNbdSource>): Promise<NbdSource> {
  const source = await openNbdSource(...args);
  sources.push(source);
  return source;
}

async function readAll(source: NbdSource): Promise<Buffer> {
  const buffer = Buffer.alloc(source.size);
  await source.read(buffer, 0, source.size, 0);
  return buffer;
}

/** All extents of the export, asking again where an answer ends early. */
async function mapAll(source: NbdSource): Promise<SourceExtent[]> {
  const all: SourceExtent[] = [];
  let at = 0;
  while (at < source.size) {
    const extents = await source.mapExtents(at, source.size - at);
    expect(extents.length).toBeGreaterThan(0);
    for (const extent of extents) {
      expect(extent.offset).toBe(at);
      at += extent.length;
      all.push(extent);
    }
  }
  expect(at).toBe(source.size);
  return all;
}

/** nbdcopy's copy of an export, the reference the client's bytes are compared with. */
async function nbdcopy(uri: string): Promise<Buffer> {
  const file = join(dir, `copy-${Date.now()}-${Math.random()}.raw`);
  await run("nbdcopy", [uri, file]);
  const bytes = await readFile(file);
  await unlink(file);
  return bytes;
}

const ZEROS = Buffer.alloc(MiB);

/** nbdkit's pattern plugin: each 8-byte word holds its own offset, big-endian. */
function expectPattern(bytes: Buffer): void {
  for (let offset = 0; offset < bytes.length; offset += 8) {
    if (bytes.readBigUInt64BE(offset) !== BigInt(offset)) throw new Error(`pattern differs at offset ${offset}`);
  }
}

/** True when every byte is zero (compared a MiB at a time; per-byte callbacks are slow). */
function allZero(bytes: Buffer): boolean {
  for (let at = 0; at < bytes.length; at += MiB) {
    const piece = bytes.subarray(at, at + MiB);
    if (!piece.equals(ZEROS.subarray(0, piece.length))) return false;
  }
  return true;
}

function expectRejectsWith(promise: Promise<unknown>, code: string, text: RegExp): Promise<void> {
  return expect(promise).rejects.toSatisfy((error: unknown) => {
    expect(error).toBeInstanceOf(NbdError);
    expect((error as NbdError).code).toBe(code);
    expect((error as Error).message).toMatch(text);
    return true;
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "nbd-client-"));
});

afterAll(async () => {
  await Promise.all(sources.map((source) => source.close()));
  await Promise.all(servers.map((server) => server.stop()));
  await rm(dir, { recursive: true, force: true });
});

describe("NBD client against nbdkit", () => {
  it("reads the pattern plugin with requests split, pipelined and bounded by the window", async () => {
    const server = await nbdkit("pattern", "size=3M");
    const source = await open(server.uri(), { maxRequestBytes: 256 * 1024, maxInFlightRequests: 3 });
    expect(source.kind).toBe("nbd");
    expect(source.size).toBe(3 * MiB);
    expect(source.exportInfo.structuredReplies).toBe(true);
    const bytes = await readAll(source);
    expectPattern(bytes);
    expect(bytes.equals(await nbdcopy(server.uri()))).toBe(true);
    // An unaligned piece into the middle of a larger buffer, bytes around it untouched.
    const target = Buffer.alloc(300_000, 0xee);
    await source.read(target, 1000, 297_001, 12_345);
    expect(target.subarray(1000, 1000 + 297_001).equals(bytes.subarray(12_345, 12_345 + 297_001))).toBe(true);
    expect(target[999]).toBe(0xee);
    expect(target[1000 + 297_001]).toBe(0xee);
  });

  it("reads an export whose size is not a multiple of 512, up to its last byte", async () => {
    const server = await nbdkit("data", "( 1 2 3 4 5 6 7 )*150000");
    const source = await open(server.uri());
    expect(source.size).toBe(7 * 150_000);
    const tail = Buffer.alloc(1001);
    await source.read(tail, 0, 1001, source.size - 1001);
    tail.forEach((value, i) => {
      if (value !== ((source.size - 1001 + i) % 7) + 1) throw new Error(`byte ${i} of the tail is ${value}`);
    });
    await expectRejectsWith(source.read(Buffer.alloc(2), 0, 2, source.size - 1), "NBD_OUT_OF_RANGE", /offset 1049999/);
  });

  it("honours a minimum block size: unaligned reads and maps are widened to whole blocks", async () => {
    const server = await nbdkit(
      "--filter=blocksize-policy",
      "pattern",
      "size=1M",
      "blocksize-minimum=4096",
      "blocksize-maximum=65536",
      "blocksize-error-policy=error",
    );
    const source = await open(server.uri());
    expect(source.exportInfo.minBlockSize).toBe(4096);
    expect(source.exportInfo.maxBlockSize).toBe(65_536);
    const whole = await readAll(source);
    expectPattern(whole);
    const piece = Buffer.alloc(70_001);
    await source.read(piece, 0, piece.length, 1234);
    expect(piece.equals(whole.subarray(1234, 1234 + piece.length))).toBe(true);
    expect(await source.mapExtents(100, 5000)).toEqual([{ offset: 100, length: 5000, zero: false }]);
  });

  it("maps and reads sparse-random exactly as nbdinfo and nbdcopy see it", async () => {
    const server = await nbdkit("sparse-random", "size=16M", "seed=4242", "percent=10", "runlength=65536");
    const source = await open(server.uri());
    expect(source.exportInfo.allocationContextId).toBeDefined();
    const extents = await mapAll(source);
    const { stdout } = await run("nbdinfo", ["--map", "--json", server.uri()]);
    const reference: SourceExtent[] = [];
    for (const entry of JSON.parse(stdout) as { offset: number; length: number; type: number }[]) {
      const zero = (entry.type & 2) !== 0;
      const last = reference.at(-1);
      if (last !== undefined && last.zero === zero)
        reference[reference.length - 1] = { ...last, length: last.length + entry.length };
      else reference.push({ offset: entry.offset, length: entry.length, zero });
    }
    expect(extents).toEqual(reference);
    expect(extents.some((extent) => extent.zero)).toBe(true);
    expect(extents.some((extent) => !extent.zero)).toBe(true);
    for (let i = 1; i < extents.length; i++) expect(extents[i]!.zero).not.toBe(extents[i - 1]!.zero);

    const bytes = await readAll(source);
    expect(bytes.equals(await nbdcopy(server.uri()))).toBe(true);
    for (const extent of extents.filter((e) => e.zero)) {
      expect(allZero(bytes.subarray(extent.offset, extent.offset + extent.length))).toBe(true);
    }
  });

  it("clips extents to the range asked for", async () => {
    const server = await nbdkit("sparse-random", "size=8M", "seed=7", "percent=30", "runlength=65536");
    const source = await open(server.uri());
    const whole = await mapAll(source);
    const boundary = whole[1]!.offset;
    const part = await source.mapExtents(boundary - 100, 300);
    expect(part[0]).toEqual({ offset: boundary - 100, length: 100, zero: whole[0]!.zero });
    expect(part[1]).toEqual({ offset: boundary, length: 200, zero: whole[1]!.zero });
    expect(await source.mapExtents(source.size, 10)).toEqual([]);
  });

  it("without structured replies reads through simple replies and reports everything as data", async () => {
    const server = await nbdkit("--no-sr", "pattern", "size=1M");
    const source = await open(server.uri(), { maxRequestBytes: 64 * 1024 });
    expect(source.exportInfo.structuredReplies).toBe(false);
    expect(source.exportInfo.allocationContextId).toBeUndefined();
    const bytes = await readAll(source);
    expect(bytes.equals(await nbdcopy(server.uri()))).toBe(true);
    expect(await source.mapExtents(4096, 1000)).toEqual([{ offset: 4096, length: 1000, zero: false }]);
  });

  it("reads over TCP, with the canonical URI as lock key", async () => {
    const server = await startNbdkitTcp(["pattern", "size=1M"]);
    servers.push(server);
    const spelling = server.uri().slice(0, -1); // nbd://127.0.0.1:PORT, without the slash of an empty export name
    const source = await open(spelling);
    expect(source.location).toBe(spelling);
    expect(source.lockKey).toBe(`${spelling}/`);
    expectPattern(await readAll(source));
  });

  it.each([
    ["structured", []],
    ["simple", ["--no-sr"]],
  ])(
    "reports a server's EIO in a %s reply naming the offset, and the connection keeps working",
    async (_kind, flags) => {
      const flag = join(dir, `inject-eio-${_kind}`);
      await writeFile(flag, "");
      const server = await nbdkit(
        ...flags,
        "--filter=error",
        "memory",
        "1M",
        "error-pread=EIO",
        "error-pread-rate=100%",
        `error-pread-file=${flag}`,
      );
      const source = await open(server.uri());
      await expectRejectsWith(
        source.read(Buffer.alloc(4096), 0, 4096, 65_536),
        "NBD_SERVER_ERROR",
        /offset 65536.*EIO/,
      );
      await unlink(flag);
      const bytes = Buffer.alloc(4096, 1);
      await source.read(bytes, 0, 4096, 65_536);
      expect(allZero(bytes)).toBe(true);
    },
  );

  it("times out a read the server delays, poisons the connection, and the server keeps serving", async () => {
    const server = await nbdkit("--filter=delay", "memory", "1M", "delay-read=5");
    const source = await open(server.uri(), { requestTimeoutMs: 300 });
    const started = Date.now();
    await expectRejectsWith(source.read(Buffer.alloc(512), 0, 512, 8192), "NBD_TIMEOUT", /offset 8192.*300 ms/);
    expect(Date.now() - started).toBeLessThan(2000);
    const again = Date.now();
    await expectRejectsWith(source.read(Buffer.alloc(512), 0, 512, 0), "NBD_TIMEOUT", /offset 0/);
    expect(Date.now() - again).toBeLessThan(100);
    const other = await open(server.uri());
    expect(await other.mapExtents(0, 4096)).toHaveLength(1);
  });

  it("rejects pending and later reads after close(), which is idempotent", async () => {
    const server = await nbdkit("--filter=delay", "memory", "1M", "delay-read=1");
    const source = await open(server.uri());
    const pending = source.read(Buffer.alloc(512), 0, 512, 1024);
    const caught = expectRejectsWith(pending, "NBD_CLOSED", /offset 1024/);
    await Promise.all([source.close(), source.close()]);
    await caught;
    await expectRejectsWith(source.read(Buffer.alloc(512), 0, 512, 0), "NBD_CLOSED", /offset 0.*closed by the client/);
  });

  it("says when nothing listens on the socket", async () => {
    await expectRejectsWith(
      openNbdSource(`nbd+unix:///?socket=${join(dir, "nobody.sock")}`),
      "NBD_UNREACHABLE",
      /nobody\.sock/,
    );
  });
});

describe("NBD client against qemu-nbd", () => {
  it("reads a raw file byte for byte", async () => {
    const file = join(dir, "disk.raw");
    const content = randomBytes(4 * MiB + 512);
    await writeFile(file, content);
    const server = await qemuNbd("-f", "raw", "-r", "-x", "disk", file);
    const source = await open(server.uri("disk"), { maxRequestBytes: MiB, maxInFlightBytes: 2 * MiB });
    expect(source.size).toBe(content.length);
    expect((await readAll(source)).equals(content)).toBe(true);
    await expectRejectsWith(openNbdSource(server.uri("nope")), "NBD_EXPORT_NOT_FOUND", /"nope"/);
  });

  it("maps a sparse qcow2: zeros where nothing was written, data where it was; reads equal qemu-img convert", async () => {
    const image = join(dir, "sparse.qcow2");
    await run("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"]);
    const writes: [number, number][] = [
      [0, MiB],
      [10 * MiB, 512 * 1024],
      [63 * MiB, MiB],
    ];
    const io = writes.flatMap(([offset, length]) => ["-c", `write -P 0xab ${offset} ${length}`]);
    await run("qemu-io", ["-f", "qcow2", ...io, "-c", `write -z ${20 * MiB} ${2 * MiB}`, image]);
    const raw = join(dir, "sparse.raw");
    await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, raw]);
    const expected = await readFile(raw);

    const server = await qemuNbd("-f", "qcow2", "-r", "-x", "vm", image);
    const source = await open(server.uri("vm"));
    const extents = await mapAll(source);
    const dataBytes = extents.filter((e) => !e.zero).reduce((sum, e) => sum + e.length, 0);
    const written = writes.reduce((sum, [, length]) => sum + length, 0);
    expect(dataBytes).toBeGreaterThanOrEqual(written);
    expect(dataBytes).toBeLessThan(written + 2 * MiB); // holes and the zeroed range are not data
    for (const [offset, length] of writes) {
      const covering = extents.find((e) => e.offset <= offset && e.offset + e.length >= offset + length);
      expect(covering?.zero).toBe(false);
    }
    const bytes = await readAll(source);
    expect(bytes.equals(expected)).toBe(true);
    for (const extent of extents.filter((e) => e.zero)) {
      expect(allZero(expected.subarray(extent.offset, extent.offset + extent.length))).toBe(true);
    }
  });
});
