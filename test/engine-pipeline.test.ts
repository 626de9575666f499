// The read pipeline's parts: zero masks of whole and partial clusters, and
// the chunk reader (fresh zero-padded buffers, one read ahead, shrinking
// sources and read errors).
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChunkReader } from "../src/engine/chunk-reader.js";
import type { Chunk } from "../src/engine/chunk-reader.js";
import { JobFailure } from "../src/engine/job-failure.js";
import { scanCluster } from "../src/engine/zero-mask.js";
import { BLOCK, CLUSTER, KiB, makeSandbox } from "./engine-helpers.js";
import type { Sandbox } from "./engine-helpers.js";

describe("scanCluster", () => {
  it("finds all-zero and all-data clusters", () => {
    expect(scanCluster(Buffer.alloc(CLUSTER), 0, CLUSTER)).toEqual({ mask: 0, zeroBytes: CLUSTER });
    expect(scanCluster(Buffer.alloc(CLUSTER, 1), 0, CLUSTER)).toEqual({ mask: 0xffff, zeroBytes: 0 });
  });

  it("sets bit j for block j, lowest address first", () => {
    const cluster = Buffer.alloc(CLUSTER);
    cluster[0] = 1; // block 0
    cluster[5 * BLOCK + 4095] = 1; // last byte of block 5
    cluster[15 * BLOCK] = 1; // block 15
    expect(scanCluster(cluster, 0, CLUSTER)).toEqual({ mask: 0b1000_0000_0010_0001, zeroBytes: 13 * BLOCK });
  });

  it("scans a cluster in the middle of a larger buffer", () => {
    const buffer = Buffer.alloc(3 * CLUSTER, 7);
    buffer.fill(0, CLUSTER, 2 * CLUSTER);
    buffer[CLUSTER + 2 * BLOCK] = 9;
    expect(scanCluster(buffer, CLUSTER, CLUSTER)).toEqual({ mask: 0b100, zeroBytes: 15 * BLOCK });
  });

  it("handles the last partial cluster as docs/vma-format.md §5.4 says", () => {
    // 68.5 KiB device: its cluster 1 holds 4608 device bytes, zero-filled after.
    const cluster = Buffer.alloc(CLUSTER);
    cluster.fill(0xab, 0, 4608);
    expect(scanCluster(cluster, 0, 4608)).toEqual({ mask: 0b11, zeroBytes: 0 });
    // Zero straddling block: only its 512 device bytes count.
    cluster.fill(0, 4096, 4608);
    expect(scanCluster(cluster, 0, 4608)).toEqual({ mask: 0b01, zeroBytes: 512 });
    // All zero: 4608 bytes, not a whole cluster.
    expect(scanCluster(Buffer.alloc(CLUSTER), 0, 4608)).toEqual({ mask: 0, zeroBytes: 4608 });
    // Exactly one block in the device.
    expect(scanCluster(Buffer.alloc(CLUSTER), 0, BLOCK)).toEqual({ mask: 0, zeroBytes: BLOCK });
  });
});

describe("ChunkReader", () => {
  let sandbox: Sandbox;
  let handle: FileHandle;
  let file: string;

  beforeEach(async () => {
    sandbox = await makeSandbox();
    file = path.join(sandbox.src, "d.raw");
  });

  afterEach(async () => {
    await handle.close().catch(() => undefined);
    await sandbox.cleanup();
  });

  async function open(data: Buffer): Promise<void> {
    await fs.writeFile(file, data);
    handle = await fs.open(file, "r");
  }

  async function readAll(reader: ChunkReader): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (let chunk = await reader.next(); chunk !== undefined; chunk = await reader.next()) chunks.push(chunk);
    return chunks;
  }

  it("yields fresh, cluster-padded buffers that add up to the device", async () => {
    const size = 200 * KiB + 5;
    const data = randomBytes(size);
    await open(data);
    const chunks = await readAll(new ChunkReader({ name: "d", handle, size, chunkSize: () => 2 * CLUSTER }));
    expect(chunks.map((chunk) => [chunk.offset, chunk.length, chunk.data.length])).toEqual([
      [0, 2 * CLUSTER, 2 * CLUSTER],
      [2 * CLUSTER, size - 2 * CLUSTER, 2 * CLUSTER],
    ]);
    const last = chunks[1] as Chunk;
    expect(last.data.subarray(last.length).equals(Buffer.alloc(2 * CLUSTER - last.length))).toBe(true);
    expect(Buffer.concat(chunks.map((chunk) => chunk.data.subarray(0, chunk.length))).equals(data)).toBe(true);
    expect(chunks[0]?.data.buffer).not.toBe(chunks[1]?.data.buffer);
  });

  it("zero-fills the tail of the last cluster whatever the buffer held before", async () => {
    const size = CLUSTER + 1000;
    await open(randomBytes(size));
    // Buffer.allocUnsafe may hand out recycled memory: simulate it.
    const dirty = {
      read: (buffer: Buffer, offset: number, length: number, position: number) => {
        buffer.fill(0xff);
        return handle.read(buffer, offset, length, position);
      },
    } as unknown as FileHandle;
    const chunks = await readAll(new ChunkReader({ name: "d", handle: dirty, size, chunkSize: () => 4 * CLUSTER }));
    expect(chunks).toHaveLength(1);
    const data = (chunks[0] as Chunk).data;
    expect(data.length).toBe(2 * CLUSTER);
    expect(data.subarray(size).equals(Buffer.alloc(2 * CLUSTER - size))).toBe(true);
  });

  it("reads one chunk ahead", async () => {
    const size = 4 * CLUSTER;
    await open(randomBytes(size));
    const positions: number[] = [];
    const counting = {
      read: (buffer: Buffer, offset: number, length: number, position: number) => {
        positions.push(position);
        return handle.read(buffer, offset, length, position);
      },
    } as unknown as FileHandle;
    const reader = new ChunkReader({ name: "d", handle: counting, size, chunkSize: () => CLUSTER });
    await reader.next();
    expect(positions).toEqual([0, CLUSTER]);
    await reader.settle();
    expect(positions).toEqual([0, CLUSTER]);
  });

  it("reports a source that ends before its size", async () => {
    await open(randomBytes(3 * CLUSTER));
    await fs.truncate(file, CLUSTER + 100);
    const reader = new ChunkReader({ name: "drive-scsi0", handle, size: 3 * CLUSTER, chunkSize: () => CLUSTER });
    await expect(readAll(reader)).rejects.toThrow(
      new JobFailure(
        `device drive-scsi0: source shrank: expected ${3 * CLUSTER} bytes, got EOF at offset ${CLUSTER + 100}`,
      ),
    );
    await reader.settle();
  });

  it("reports a read error with the device and offset", async () => {
    await open(randomBytes(2 * CLUSTER));
    const failing = {
      read: (buffer: Buffer, offset: number, length: number, position: number) =>
        position === CLUSTER
          ? Promise.reject(Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" }))
          : handle.read(buffer, offset, length, position),
    } as unknown as FileHandle;
    const reader = new ChunkReader({
      name: "drive-scsi1",
      handle: failing,
      size: 2 * CLUSTER,
      chunkSize: () => CLUSTER,
    });
    expect((await reader.next())?.offset).toBe(0);
    await expect(reader.next()).rejects.toThrow(
      new JobFailure(`device drive-scsi1: read error at offset ${CLUSTER}: EIO`),
    );
  });
});
