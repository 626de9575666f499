// The read pipeline's parts: zero masks of whole and partial clusters, and
// the chunk reader (fresh zero-padded buffers, one read ahead, shrinking
// sources and read errors).
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChunkReader } from "../src/engine/chunk-reader.js";
import type { Chunk } from "../src/engine/chunk-reader.js";
import { JobFailure } from "../src/engine/job-failure.js";
import { PathPolicy } from "../src/engine/path-policy.js";
import type { DiskSource, SourceExtent } from "../src/sources/disk-source.js";
import { openFileSource } from "../src/sources/file/file-source.js";
import { SourceReadError } from "../src/sources/source-read-errors.js";
import { MemorySource } from "./helpers/memory-source.js";
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
  let source: DiskSource | undefined;
  let file: string;

  beforeEach(async () => {
    sandbox = await makeSandbox();
    file = path.join(sandbox.src, "d.raw");
  });

  afterEach(async () => {
    await source?.close();
    source = undefined;
    await sandbox.cleanup();
  });

  /** The real file source over `data` in the sandbox. */
  async function open(data: Buffer): Promise<DiskSource> {
    await fs.writeFile(file, data);
    source = await openFileSource(new PathPolicy(sandbox.out, [sandbox.src]), "d.raw", "devices[0].path");
    return source;
  }

  /** `inner` with its read replaced. */
  function withRead(inner: DiskSource, read: DiskSource["read"]): DiskSource {
    return {
      kind: inner.kind,
      size: inner.size,
      lockKey: inner.lockKey,
      location: inner.location,
      read,
      close: () => inner.close(),
    };
  }

  async function readAll(reader: ChunkReader): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (let chunk = await reader.next(); chunk !== undefined; chunk = await reader.next()) chunks.push(chunk);
    return chunks;
  }

  function dataOf(chunk: Chunk | undefined): Buffer {
    if (chunk?.data === undefined) throw new Error("chunk has no data");
    return chunk.data;
  }

  it("yields fresh, cluster-padded buffers that add up to the device", async () => {
    const size = 200 * KiB + 5;
    const data = randomBytes(size);
    const file = await open(data);
    const chunks = await readAll(new ChunkReader({ name: "d", source: file, chunkSize: () => 2 * CLUSTER }));
    expect(chunks.map((chunk) => [chunk.offset, chunk.length, dataOf(chunk).length, chunk.bytesRead])).toEqual([
      [0, 2 * CLUSTER, 2 * CLUSTER, 2 * CLUSTER],
      [2 * CLUSTER, size - 2 * CLUSTER, 2 * CLUSTER, size - 2 * CLUSTER],
    ]);
    const last = chunks[1] as Chunk;
    expect(
      dataOf(last)
        .subarray(last.length)
        .equals(Buffer.alloc(2 * CLUSTER - last.length)),
    ).toBe(true);
    expect(Buffer.concat(chunks.map((chunk) => dataOf(chunk).subarray(0, chunk.length))).equals(data)).toBe(true);
    expect(dataOf(chunks[0]).buffer).not.toBe(dataOf(chunks[1]).buffer);
  });

  it("zero-fills the tail of the last cluster whatever the buffer held before", async () => {
    const size = CLUSTER + 1000;
    const file = await open(randomBytes(size));
    // Buffer.allocUnsafe may hand out recycled memory: simulate it.
    const dirty = withRead(file, (buffer, offset, length, position) => {
      buffer.fill(0xff);
      return file.read(buffer, offset, length, position);
    });
    const chunks = await readAll(new ChunkReader({ name: "d", source: dirty, chunkSize: () => 4 * CLUSTER }));
    expect(chunks).toHaveLength(1);
    const data = dataOf(chunks[0]);
    expect(data.length).toBe(2 * CLUSTER);
    expect(data.subarray(size).equals(Buffer.alloc(2 * CLUSTER - size))).toBe(true);
  });

  it("reads one chunk ahead", async () => {
    const size = 4 * CLUSTER;
    const file = await open(randomBytes(size));
    const positions: number[] = [];
    const counting = withRead(file, (buffer, offset, length, position) => {
      positions.push(position);
      return file.read(buffer, offset, length, position);
    });
    const reader = new ChunkReader({ name: "d", source: counting, chunkSize: () => CLUSTER });
    await reader.next();
    expect(positions).toEqual([0, CLUSTER]);
    await reader.settle();
    expect(positions).toEqual([0, CLUSTER]);
  });

  it("reports a source that ends before its size", async () => {
    const file = await open(randomBytes(3 * CLUSTER));
    await fs.truncate(path.join(sandbox.src, "d.raw"), CLUSTER + 100);
    const reader = new ChunkReader({ name: "drive-scsi0", source: file, chunkSize: () => CLUSTER });
    await expect(readAll(reader)).rejects.toThrow(
      new JobFailure(
        `device drive-scsi0: source shrank: expected ${3 * CLUSTER} bytes, got EOF at offset ${CLUSTER + 100}`,
      ),
    );
    await reader.settle();
  });

  it("reports a read error with the device and offset", async () => {
    const file = await open(randomBytes(2 * CLUSTER));
    const failing = withRead(file, (buffer, offset, length, position) =>
      position === CLUSTER
        ? Promise.reject(
            new SourceReadError(position, Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" })),
          )
        : file.read(buffer, offset, length, position),
    );
    const reader = new ChunkReader({ name: "drive-scsi1", source: failing, chunkSize: () => CLUSTER });
    expect((await reader.next())?.offset).toBe(0);
    await expect(reader.next()).rejects.toThrow(
      new JobFailure(`device drive-scsi1: read error at offset ${CLUSTER}: EIO`),
    );
  });

  it("names the requested offset when a source rejects with a plain error", async () => {
    const memory = new MemorySource(randomBytes(2 * CLUSTER), {
      beforeRead: (position) => {
        if (position === CLUSTER) throw new Error("connection reset");
      },
    });
    const reader = new ChunkReader({ name: "d", source: memory, chunkSize: () => CLUSTER });
    await reader.next();
    await expect(reader.next()).rejects.toThrow(
      new JobFailure(`device d: read error at offset ${CLUSTER}: connection reset`),
    );
  });
});

describe("ChunkReader over a source that maps its zero extents", () => {
  /** A device of `clusters` clusters, data where `isData(cluster)`, mapped accordingly (one extent per cluster run). */
  function mappedDevice(clusters: number, isData: (cluster: number) => boolean, tail = 0): MemorySource {
    const size = clusters * CLUSTER + tail;
    const data = Buffer.alloc(size);
    const extents: SourceExtent[] = [];
    for (let cluster = 0; cluster * CLUSTER < size; cluster++) {
      const offset = cluster * CLUSTER;
      const length = Math.min(CLUSTER, size - offset);
      const zero = !isData(cluster);
      if (!zero) data.fill(cluster + 1, offset, offset + length);
      const previous = extents[extents.length - 1];
      if (previous !== undefined && previous.zero === zero) {
        extents[extents.length - 1] = { ...previous, length: previous.length + length };
      } else {
        extents.push({ offset, length, zero });
      }
    }
    return new MemorySource(data, { extents, extentsPerCall: 2 });
  }

  async function readAll(reader: ChunkReader): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (let chunk = await reader.next(); chunk !== undefined; chunk = await reader.next()) chunks.push(chunk);
    return chunks;
  }

  it("never reads clusters inside zero extents, and covers a run of them with one chunk without data", async () => {
    // Clusters: 0-1 data, 2-9 zero, 10 data, 11 zero, 12 data.
    const source = mappedDevice(13, (cluster) => cluster <= 1 || cluster === 10 || cluster === 12);
    const chunks = await readAll(new ChunkReader({ name: "d", source, chunkSize: () => 4 * CLUSTER }));
    expect(source.reads).toEqual([
      [0, 2 * CLUSTER],
      [10 * CLUSTER, CLUSTER],
      [12 * CLUSTER, CLUSTER],
    ]);
    expect(chunks.map((chunk) => [chunk.offset / CLUSTER, chunk.length / CLUSTER, chunk.bytesRead / CLUSTER])).toEqual([
      [0, 4, 2], // clusters 0-3: 2 and 3 are zero, not read
      [4, 6, 0], // the rest of the zero run, as one chunk
      [10, 3, 2], // 10 data, 11 zero, 12 data
    ]);
    expect(chunks[1]?.data).toBeUndefined();
    expect(chunks[0]?.zeroClusters).toEqual([false, false, true, true]);
    expect(chunks[2]?.zeroClusters).toEqual([false, true, false]);
  });

  it("reads a cluster that is only partly zero", async () => {
    const data = randomBytes(3 * CLUSTER);
    data.fill(0, CLUSTER, 2 * CLUSTER - 4096);
    const source = new MemorySource(data, {
      extents: [
        { offset: 0, length: CLUSTER, zero: false },
        { offset: CLUSTER, length: CLUSTER - 4096, zero: true },
        { offset: 2 * CLUSTER - 4096, length: CLUSTER + 4096, zero: false },
      ],
    });
    const chunks = await readAll(new ChunkReader({ name: "d", source, chunkSize: () => 3 * CLUSTER }));
    expect(source.reads).toEqual([[0, 3 * CLUSTER]]);
    expect(chunks[0]?.zeroClusters).toEqual([false, false, false]);
  });

  it("treats the last partial cluster of zeros as zero", async () => {
    const source = mappedDevice(1, (cluster) => cluster === 0, 4608);
    const chunks = await readAll(new ChunkReader({ name: "d", source, chunkSize: () => 4 * CLUSTER }));
    expect(source.reads).toEqual([[0, CLUSTER]]);
    expect(chunks.map((chunk) => [chunk.offset, chunk.length, chunk.bytesRead])).toEqual([
      [0, CLUSTER + 4608, CLUSTER],
    ]);
    expect(chunks[0]?.zeroClusters).toEqual([false, true]);
  });

  it("fails naming the device and offset when the map has a gap", async () => {
    const source = new MemorySource(Buffer.alloc(4 * CLUSTER), {
      extents: [
        { offset: 0, length: CLUSTER, zero: true },
        { offset: 2 * CLUSTER, length: 2 * CLUSTER, zero: true },
      ],
    });
    const reader = new ChunkReader({ name: "drive-scsi0", source, chunkSize: () => CLUSTER });
    await expect(readAll(reader)).rejects.toThrow(
      /^device drive-scsi0: mapping extents at offset 0 failed: .*not contiguous at offset 65536/,
    );
  });

  it("fails rather than loops when the map is empty", async () => {
    const source = new MemorySource(Buffer.alloc(2 * CLUSTER), { extents: [] });
    const reader = new ChunkReader({ name: "d", source, chunkSize: () => CLUSTER });
    await expect(readAll(reader)).rejects.toThrow(/device d: mapping extents at offset 0 failed: .*empty at offset 0/);
  });
});
