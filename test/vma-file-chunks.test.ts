// Reading archive files into reused buffers (src/vma/file-chunk-source.ts):
// the bytes come out exactly, a chunk's memory is read into again only after
// the consumer recycled it, the reader recycles an extent's memory only once
// the next event is asked for, and extract holds the chunks of extents whose
// writes are still in flight (src/vma/chunk-holds.ts).
import { createHash, randomBytes } from "node:crypto";
import { type FileHandle, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { extractArchive } from "../src/vma/extract-archive.js";
import { FileChunkSource } from "../src/vma/file-chunk-source.js";
import { openArchive } from "../src/vma/open-archive.js";
import { readVma } from "../src/vma/reader.js";
import { VmaWriter } from "../src/vma/writer.js";
import { canMount, mountTmpfs, unmount } from "./helpers/mounts.js";

const CLUSTER = 65536;
const BLOCK = 4096;
const MiB = 2 ** 20;

let dir: string;
let disk: Buffer;
let archivePath: string;

/** Random 4 KiB blocks, every third one zero, so extents mix stored and zero blocks. */
function diskData(size: number): Buffer {
  const data = randomBytes(size);
  for (let block = 0; block * BLOCK < size; block += 3) data.fill(0, block * BLOCK, (block + 1) * BLOCK);
  return data;
}

async function writeArchive(path: string, data: Buffer): Promise<void> {
  const parts: Buffer[] = [];
  const writer = new VmaWriter(
    { write: async (written) => void parts.push(...written.map((part) => Buffer.from(part))) },
    { uuid: randomBytes(16), ctime: 1700000000 },
  );
  const devId = writer.addDevice("drive-scsi0", data.length);
  for (let cluster = 0; cluster * CLUSTER < data.length; cluster++) {
    // The last cluster is zero-padded to 64 KiB, as the writer requires.
    const bytes = Buffer.alloc(CLUSTER);
    data.copy(bytes, 0, cluster * CLUSTER, Math.min(data.length, (cluster + 1) * CLUSTER));
    let mask = 0;
    for (let block = 0; block < 16; block++) {
      if (bytes.subarray(block * BLOCK, (block + 1) * BLOCK).some((byte) => byte !== 0)) mask |= 1 << block;
    }
    await writer.writeCluster(devId, cluster, bytes, mask);
  }
  writer.completeDevice(devId);
  await writer.finish();
  await writeFile(path, Buffer.concat(parts));
}

const md5 = (parts: readonly Buffer[]): string => {
  const hash = createHash("md5");
  for (const part of parts) hash.update(part);
  return hash.digest("hex");
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "vmabackup-file-chunks-"));
  // 20 MiB + 3 blocks: five 4 MiB chunks of archive and then some, extents crossing chunk borders.
  disk = diskData(20 * MiB + 3 * BLOCK);
  archivePath = join(dir, "disk.vma");
  await writeArchive(archivePath, disk);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("FileChunkSource", () => {
  it("yields the file's bytes in order, and reads into a chunk's memory again only after it was recycled", async () => {
    const file = join(dir, "odd.bin");
    const bytes = randomBytes(10 * 65536 + 5);
    await writeFile(file, bytes);
    const source = new FileChunkSource(await open(file, "r"), 65536);
    const kept: Array<{ chunk: Buffer; copy: Buffer }> = [];
    const memories = new Set<ArrayBufferLike>();
    const received: Buffer[] = [];
    let index = 0;
    for await (const chunk of source) {
      received.push(Buffer.from(chunk));
      memories.add(chunk.buffer);
      // Every other chunk is kept (never recycled); it must never be read into again.
      if (index % 2 === 0) kept.push({ chunk, copy: Buffer.from(chunk) });
      else source.recycle(chunk);
      index += 1;
    }
    expect(Buffer.concat(received).equals(bytes)).toBe(true);
    expect(source.position).toBe(bytes.length);
    for (const { chunk, copy } of kept) expect(chunk.equals(copy)).toBe(true);
    // 11 chunks: 6 kept ones own their memory, the 5 recycled ones share a few buffers.
    expect(memories.size).toBeLessThan(11);
    expect(memories.size).toBeGreaterThanOrEqual(7);
  });
});

describe("FileChunkSource with reads in flight", () => {
  it("reads on from where a short read in mid-file stopped, leaving no gap and repeating nothing", async () => {
    const bytes = randomBytes(8 * 65536 + 100);
    let shortened = 0;
    // A file handle whose read at 2 chunks in returns only 1000 bytes, once (as a signal might make it).
    const handle = {
      read: async (buffer: Buffer, offset: number, length: number, position: number) => {
        let end = Math.min(bytes.length, position + length);
        if (position === 2 * 65536 && shortened === 0) {
          shortened += 1;
          end = position + 1000;
        }
        const bytesRead = Math.max(0, end - position);
        if (bytesRead > 0) bytes.copy(buffer, offset, position, position + bytesRead);
        return { bytesRead, buffer };
      },
      close: async () => undefined,
    } as unknown as FileHandle;
    const source = new FileChunkSource(handle, 65536);
    const received: Buffer[] = [];
    for await (const chunk of source) received.push(Buffer.from(chunk));
    expect(shortened).toBe(1);
    expect(Buffer.concat(received).equals(bytes)).toBe(true);
    expect(source.position).toBe(bytes.length);
  });
});

describe("the reader on a recycling source", () => {
  it("keeps an extent's data intact until the next event is asked for, then reuses its memory", async () => {
    const chunkSize = 512 * 1024;
    const source = new FileChunkSource(await open(archivePath, "r"), chunkSize);
    const rebuilt = Buffer.alloc(disk.length);
    const memories = new Set<ArrayBufferLike>();
    let previous: { data: readonly Buffer[]; digest: string } | undefined;
    let overwritten = 0;
    for await (const event of readVma(source)) {
      if (previous !== undefined && md5(previous.data) !== previous.digest) overwritten += 1;
      previous = undefined;
      if (event.type !== "extent") continue;
      const { slots, data } = event.extent;
      const digest = md5(data);
      // Let the read ahead finish before asking for more: the data must not change meanwhile.
      await new Promise((resolve) => setTimeout(resolve, 2));
      expect(md5(data)).toBe(digest);
      const whole = Buffer.concat(data as Buffer[]);
      for (const slot of slots) {
        let offset = slot.dataOffset;
        for (let block = 0; block < 16; block++) {
          if ((slot.mask & (1 << block)) === 0) continue;
          const at = slot.cluster * CLUSTER + block * BLOCK;
          whole.copy(rebuilt, at, offset, offset + Math.min(BLOCK, disk.length - at));
          offset += BLOCK;
        }
      }
      for (const view of data) memories.add(view.buffer);
      previous = { data, digest };
    }
    expect(rebuilt.equals(disk)).toBe(true);
    // Held past the next event, earlier extents' memory was read into again: it is reused, not reallocated.
    expect(overwritten).toBeGreaterThan(0);
    const chunksRead = Math.ceil(source.position / chunkSize);
    expect(memories.size).toBeLessThan(chunksRead / 2);
  });
});

describe("extract from a file read into reused buffers", () => {
  it("writes every byte of a disk spanning many input chunks", async () => {
    for (const sparse of [false, true]) {
      const out = join(dir, `out-${sparse}`);
      const archive = await openArchive(archivePath);
      const result = await extractArchive(archive.chunks, { dir: out, sparse, allowIncomplete: false });
      expect(result.ok).toBe(true);
      const extracted = await readFile(join(out, "disk-drive-scsi0.raw"));
      expect(extracted.equals(disk)).toBe(true);
    }
  });

  it("keeps the chunks of extents still being written out of reuse, with small chunks read into again at once", async () => {
    // ~40 chunks per extent: while an extent's writes are in flight, the
    // reader recycles its chunks and reads the next extent; memory read into
    // too early would show in the image.
    for (const sparse of [false, true]) {
      const out = join(dir, `small-chunks-${sparse}`);
      const source = new FileChunkSource(await open(archivePath, "r"), 96 * 1024 + 512);
      const recycled = new Set<ArrayBufferLike>();
      const recycle = source.recycle.bind(source);
      source.recycle = (chunk) => {
        recycled.add(chunk.buffer);
        recycle(chunk);
      };
      const result = await extractArchive(source, { dir: out, sparse, allowIncomplete: false });
      expect(result.ok).toBe(true);
      expect((await readFile(join(out, "disk-drive-scsi0.raw"))).equals(disk)).toBe(true);
      // Memory was reused: fewer buffers than chunks read.
      expect(recycled.size).toBeGreaterThan(0);
      expect(recycled.size).toBeLessThan(source.position / (96 * 1024 + 512) / 2);
    }
  });

  it("a write failing mid-extraction (ENOSPC on a 4 MiB tmpfs) rejects and leaves no file behind", async (context) => {
    if (!(await canMount())) context.skip(); // needs root to mount a tmpfs
    const out = join(dir, "full");
    await mkdir(out);
    await mountTmpfs(out, 4 * MiB);
    try {
      const archive = await openArchive(archivePath);
      await expect(
        extractArchive(archive.chunks, { dir: out, sparse: false, allowIncomplete: false }),
      ).rejects.toMatchObject({ code: "ENOSPC" });
      expect(await readdir(out)).toEqual([]);
    } finally {
      await unmount(out);
    }
  });
});
