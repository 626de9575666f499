// The strict streaming VMA reader: the real Proxmox sample, the worked example
// of docs/vma-format.md section 9, every check of sections 2-6 on crafted
// archives, and damaged copies of archives made by the service's writer.
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { gunzipSync } from "node:zlib";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { encodeExtentHeader, type ExtentSlot } from "../src/vma/encode-extent.js";
import { encodeHeader, type VmaHeaderInput } from "../src/vma/encode-header.js";
import { extractArchive } from "../src/vma/extract-archive.js";
import { describeMissing } from "../src/vma/reader-cluster-tracker.js";
import { ExtentData } from "../src/vma/reader-extent-data.js";
import { readVma } from "../src/vma/reader.js";
import type { VmaExtent, VmaHeader, VmaProblem, VmaSummary } from "../src/vma/reader-types.js";
import { VmaWriter } from "../src/vma/writer.js";

const SAMPLE = resolve(import.meta.dirname, "fixtures/pve-real-truncated-sample.vma.gz");
const CLUSTER = 65536;
const BLOCK = 4096;
const UUID = Buffer.from("00112233445566778899aabbccddeeff", "hex");

// --- Helpers: feeding the reader and collecting what it reports ---

interface ReadResult {
  readonly header: VmaHeader | undefined;
  readonly extents: VmaExtent[];
  readonly problems: VmaProblem[];
  readonly summary: VmaSummary;
  /** Device contents rebuilt from the accepted slots, by dev_id (clusters never written stay zero). */
  readonly disks: Map<number, Buffer>;
}

/** Yields `bytes` in chunks of the given sizes, cycling through them. */
async function* chunked(bytes: Buffer, sizes: readonly number[] = [bytes.length || 1]): AsyncGenerator<Buffer> {
  let index = 0;
  for (let offset = 0; offset < bytes.length; index++) {
    const size = sizes[index % sizes.length]!;
    yield bytes.subarray(offset, offset + size);
    offset += size;
  }
}

async function read(bytes: Buffer, chunkSizes?: readonly number[]): Promise<ReadResult> {
  let header: VmaHeader | undefined;
  let summary: VmaSummary | undefined;
  const extents: VmaExtent[] = [];
  const problems: VmaProblem[] = [];
  const disks = new Map<number, Buffer>();
  for await (const event of readVma(chunked(bytes, chunkSizes))) {
    if (event.type === "header") {
      header = event.header;
      for (const device of header.devices.values()) {
        if (device.size <= 64 * 1024 * 1024) disks.set(device.devId, Buffer.alloc(device.size));
      }
    } else if (event.type === "extent") {
      extents.push(event.extent);
      placeSlots(event.extent, disks);
    } else if (event.type === "problem") {
      problems.push(event.problem);
    } else {
      summary = event.summary;
    }
  }
  if (summary === undefined) throw new Error("the reader yielded no end event");
  return { header, extents, problems, summary, disks };
}

/** Copies each accepted slot's stored blocks to their place in the device. */
function placeSlots(extent: VmaExtent, disks: Map<number, Buffer>): void {
  const data = new ExtentData(extent.data);
  for (const slot of extent.slots) {
    const disk = disks.get(slot.devId);
    if (disk === undefined) continue;
    let offset = slot.dataOffset;
    for (let block = 0; block < 16; block++) {
      if ((slot.mask & (1 << block)) === 0) continue;
      const position = slot.cluster * CLUSTER + block * BLOCK;
      const block4k = Buffer.concat(data.views(offset, BLOCK));
      offset += BLOCK;
      if (position < disk.length) block4k.copy(disk, position, 0, Math.min(BLOCK, disk.length - position));
    }
  }
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

// --- Helpers: crafting archives byte by byte (with the encoders), then breaking them ---

interface CraftedExtent {
  readonly slots: readonly ExtentSlot[];
  /** Stored blocks; defaults to one recognizable 4 KiB block per mask bit. */
  readonly data?: Buffer;
}

function storedBlocks(slots: readonly ExtentSlot[]): Buffer {
  const blocks: Buffer[] = [];
  for (const slot of slots) {
    for (let block = 0; block < 16; block++) {
      if ((slot.mask & (1 << block)) !== 0)
        blocks.push(Buffer.alloc(BLOCK, ((slot.clusterNum * 16 + block) % 251) + 1));
    }
  }
  return Buffer.concat(blocks);
}

function craft(
  header: Partial<VmaHeaderInput> & Pick<VmaHeaderInput, "devices">,
  extents: readonly CraftedExtent[],
): Buffer {
  const parts: Uint8Array[] = [encodeHeader({ uuid: UUID, ctime: 1700000000, configs: [], ...header })];
  for (const extent of extents) {
    parts.push(encodeExtentHeader(header.uuid ?? UUID, extent.slots), extent.data ?? storedBlocks(extent.slots));
  }
  return Buffer.concat(parts);
}

/** Recomputes the header md5 after a deliberate change, so that the change itself is what gets reported. */
function resealHeader(archive: Buffer): void {
  const size = archive.readUInt32BE(56);
  archive.fill(0, 32, 48);
  createHash("md5").update(archive.subarray(0, size)).digest().copy(archive, 32);
}

function resealExtent(archive: Buffer, offset: number): void {
  archive.fill(0, offset + 24, offset + 40);
  createHash("md5")
    .update(archive.subarray(offset, offset + 512))
    .digest()
    .copy(archive, offset + 24);
}

/** Archive offsets of the extent headers, found by walking block_counts. */
function extentOffsets(archive: Buffer): number[] {
  const offsets: number[] = [];
  for (
    let offset = archive.readUInt32BE(56);
    offset < archive.length;
    offset += 512 + archive.readUInt16BE(offset + 6) * BLOCK
  ) {
    offsets.push(offset);
  }
  return offsets;
}

function slotOffset(extentOffset: number, slot: number): number {
  return extentOffset + 40 + 8 * slot;
}

const ONE_DEVICE = { devices: [{ name: "drive-scsi0", size: 4 * CLUSTER }] };
const HEADER_SIZE = 12800;

// --- Archives from the service's writer ---

interface WriterDisk {
  readonly name: string;
  readonly data: Buffer;
}

/** Writes `disks` with VmaWriter, clusters in the given order of [diskIndex, cluster] pairs. */
async function writeArchive(
  disks: readonly WriterDisk[],
  options: {
    uuid?: Buffer;
    order?: ReadonlyArray<readonly [number, number]>;
    configs?: ReadonlyArray<[string, Buffer]>;
    /** Store every block, zero or not (mask 0xffff), as other writers may; whole clusters only. */
    storeZeroBlocks?: boolean;
  } = {},
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const writer = new VmaWriter(
    { write: async (parts) => void chunks.push(...parts.map((part) => Buffer.from(part))) },
    { uuid: options.uuid ?? randomBytes(16), ctime: 1700000000 },
  );
  for (const [name, data] of options.configs ?? []) writer.addConfig(name, data);
  const devIds = disks.map((disk) => writer.addDevice(disk.name, disk.data.length));
  const order =
    options.order ??
    disks.flatMap((disk, index) =>
      Array.from({ length: Math.ceil(disk.data.length / CLUSTER) }, (_, cluster) => [index, cluster] as const),
    );
  for (const [index, cluster] of order) {
    const disk = disks[index]!;
    const data = Buffer.alloc(CLUSTER);
    disk.data.copy(data, 0, cluster * CLUSTER, Math.min(disk.data.length, (cluster + 1) * CLUSTER));
    let mask = options.storeZeroBlocks ? 0xffff : 0;
    for (let block = 0; block < 16 && !options.storeZeroBlocks; block++) {
      if (!data.subarray(block * BLOCK, (block + 1) * BLOCK).equals(Buffer.alloc(BLOCK))) mask |= 1 << block;
    }
    await writer.writeCluster(devIds[index]!, cluster, data, mask);
  }
  for (const devId of devIds) writer.completeDevice(devId);
  await writer.finish();
  return Buffer.concat(chunks);
}

/** Random data in 4 KiB blocks, about a third of them zero. */
function diskData(size: number, seed: number): Buffer {
  const data = randomBytes(size);
  for (let block = 0; block * BLOCK < size; block++) {
    if ((block * 7 + seed) % 3 === 0) data.fill(0, block * BLOCK, Math.min(size, (block + 1) * BLOCK));
  }
  return data;
}

// --- Tests ---

describe("the real Proxmox sample", () => {
  it("reads header, configs, device and both extents with no problem, clusters out of order", async () => {
    const archive = gunzipSync(await readFile(SAMPLE));
    expect(sha256(archive)).toBe("9c649a8f6ddd65034b6e24f76f104b2ab213f43015fd36a6d49477b9b8841ad4");
    const result = await read(archive, [4 * 1024 * 1024]);
    expect(result.problems).toEqual([]);
    const header = result.header!;
    expect(header).toMatchObject({
      version: 1,
      uuid: "04fc12eb-0fed-4322-9aaa-f4e412f68096",
      ctime: 1635680622,
      headerSize: 12800,
      blobBufferOffset: 12288,
      blobBufferSize: 453,
    });
    expect(header.configs.map((config) => [config.slot, config.name, config.data.length])).toEqual([
      [0, "qemu-server.conf", 417],
    ]);
    expect(sha256(header.configs[0]!.data)).toBe("383cc8e9ab35d6a56b9a83b502263942253c807216c83eccae89a23ef040f950");
    expect(header.configs[0]!.data.toString("utf8").trimEnd().split("\n").at(-1)).toBe(
      "#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:",
    );
    expect([...header.devices.values()]).toEqual([
      { devId: 1, name: "drive-scsi0", size: 10737418240, clusterCount: 163840, isVmstate: false },
    ]);

    expect(result.extents.map((extent) => [extent.offset, extent.slots.length, extent.blockCount])).toEqual([
      [12800, 58, 16],
      [78848, 58, 112],
    ]);
    expect(result.extents[1]!.slots.slice(0, 9).map((slot) => slot.cluster)).toEqual([
      90, 96, 112, 128, 144, 48, 160, 16, 91,
    ]);
    const full = result.extents.flatMap((extent) => extent.slots).filter((slot) => slot.mask === 0xffff);
    expect(full.map((slot) => slot.cluster).sort((a, b) => a - b)).toEqual([0, 16, 17, 18, 19, 20, 21, 22]);

    expect(result.summary).toMatchObject({
      archiveBytes: 538112,
      extents: 2,
      clusters: 116,
      storedBlocks: 128,
      problemCount: 0,
    });
    const [missing] = result.summary.missing;
    expect(result.summary.missing).toHaveLength(1);
    expect(missing).toMatchObject({ devId: 1, name: "drive-scsi0", count: 163840 - 116, clusterCount: 163840 });
    expect(missing!.ranges.at(-1)).toEqual({ first: 167, last: 163839 });
    expect(describeMissing(missing!)).toBe(
      "drive-scsi0: clusters 23-31, 55-63, 104-111, 120-127, 136-143, 151-159, 167-163839 missing (163724 of 163840)",
    );
    expect([...missing!.allRanges()]).toEqual(missing!.ranges);
  });

  it("gives the same result whatever the chunk boundaries", async () => {
    const archive = gunzipSync(await readFile(SAMPLE));
    const whole = await read(archive);
    const wholeData = whole.extents.map((extent) => sha256(Buffer.concat(extent.data)));
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 7, max: 70000 }), { minLength: 1, maxLength: 8 }), async (sizes) => {
        const split = await read(archive, sizes);
        expect(split.problems).toEqual([]);
        expect(split.summary).toMatchObject({ clusters: 116, storedBlocks: 128, archiveBytes: 538112 });
        expect(split.extents.map((extent) => extent.slots)).toEqual(whole.extents.map((extent) => extent.slots));
        expect(split.extents.map((extent) => sha256(Buffer.concat(extent.data)))).toEqual(wholeData);
      }),
      { numRuns: 25 },
    );
  });

  it("stops reading when the consumer stops after the header", async () => {
    const archive = gunzipSync(await readFile(SAMPLE));
    let pulled = 0;
    async function* counting(): AsyncGenerator<Buffer> {
      for await (const chunk of chunked(archive, [BLOCK])) {
        pulled += chunk.length;
        yield chunk;
      }
    }
    for await (const event of readVma(counting())) {
      if (event.type === "header") break;
    }
    expect(pulled).toBeLessThanOrEqual(HEADER_SIZE + BLOCK);
  });
});

describe("the worked example of docs/vma-format.md section 9", () => {
  it("decodes the documented bytes to the documented disk", async () => {
    const cluster0 = Buffer.alloc(CLUSTER, 0xab);
    const archive = Buffer.concat([
      encodeHeader({
        uuid: UUID,
        ctime: 1700000000,
        configs: [{ name: "qemu-server.conf", data: Buffer.from("memory: 512\n") }],
        devices: [{ name: "drive-scsi0", size: 131072 }],
      }),
      encodeExtentHeader(UUID, [
        { devId: 1, clusterNum: 0, mask: 0xffff },
        { devId: 1, clusterNum: 1, mask: 0 },
      ]),
      cluster0,
    ]);
    // The same bytes as the document, so the reader is checked against it, not against our writer.
    expect(sha256(archive)).toBe("c91d7bfd66fb43d246df75b679ec75efb49db38badc4f7948a484e2c2018da5e");
    const result = await read(archive);
    expect(result.problems).toEqual([]);
    expect(result.summary.missing).toEqual([]);
    expect(result.header).toMatchObject({
      uuid: "00112233-4455-6677-8899-aabbccddeeff",
      ctime: 1700000000,
      blobBufferSize: 48,
    });
    expect(result.header!.configs[0]!.data.toString()).toBe("memory: 512\n");
    expect(sha256(result.disks.get(1)!)).toBe("9654acb203b978f6a92efaa01689f4a252e5391c2a512febd3c5fec4ce457802");
  });
});

describe("header checks", () => {
  it("reports an empty input, a short input and a foreign file", async () => {
    expect((await read(Buffer.alloc(0))).problems).toEqual([
      { offset: 0, message: "the archive is empty; expected a VMA header" },
    ]);
    const archive = craft(ONE_DEVICE, []);
    const short = await read(archive.subarray(0, 5000));
    expect(short.problems).toEqual([
      { offset: 5000, message: `the archive ends after 5000 bytes; expected a header of ${HEADER_SIZE} bytes` },
    ]);
    const cutInBlobs = await read(archive.subarray(0, 12300));
    expect(cutInBlobs.problems[0]!.offset).toBe(12300);
    const foreign = await read(Buffer.from("\x89PNG\r\n\x1a\n".padEnd(20000, "x"), "latin1"));
    expect(foreign.problems).toEqual([
      { offset: 0, message: 'expected the VMA magic "56 4d 41 00", found "89 50 4e 47"' },
    ]);
    expect(foreign.header).toBeUndefined();
  });

  it("checks header_size, the md5, the version and the blob buffer bounds, in Proxmox's order", async () => {
    const base = craft(ONE_DEVICE, [{ slots: [] }]);
    const tooSmall = Buffer.from(base);
    tooSmall.writeUInt32BE(12288, 56);
    expect((await read(tooSmall)).problems).toEqual([
      { offset: 56, message: "header_size 12288; expected more than 12288 (the fixed part plus the blob buffer)" },
    ]);
    const huge = Buffer.from(base);
    huge.writeUInt32BE(600000, 56);
    expect((await read(huge)).problems[0]).toMatchObject({
      offset: 56,
      message: expect.stringContaining("expected at most 524288"),
    });

    const version = Buffer.from(base);
    version.writeUInt32BE(2, 4);
    resealHeader(version);
    const versionResult = await read(version);
    expect(versionResult.problems).toEqual([{ offset: 4, message: "version 2; expected 1" }]);
    expect(versionResult.header).toBeUndefined();
    expect(versionResult.extents).toEqual([]);

    const bounds = Buffer.from(base);
    bounds.writeUInt32BE(1000, 52);
    resealHeader(bounds);
    expect((await read(bounds)).problems).toEqual([
      {
        offset: 48,
        message:
          `blob buffer at 12288 with size 1000; expected it to start at or after 12288 and end within ` +
          `header_size ${HEADER_SIZE}`,
      },
    ]);
  });

  it("reports nonzero reserved bytes and padding at their exact offset", async () => {
    for (const offset of [60, 2043, 4093, 4096 + 32 + 5, 4096 + 32 + 20, 12700]) {
      const archive = craft(ONE_DEVICE, [{ slots: [] }]);
      archive[offset] = 0x7f;
      resealHeader(archive);
      const result = await read(archive);
      expect(result.problems, `byte ${offset}`).toHaveLength(1);
      expect(result.problems[0]!.offset).toBe(offset);
      expect(result.problems[0]!.message).toMatch(/must be zero; byte \d+ is 0x7f$/);
      // A writer's slip in a reserved byte does not hide the archive's contents.
      expect(result.header?.devices.size).toBe(1);
    }
  });

  it("reports pointers that are not blob starts, half-set slots and bad names", async () => {
    const configs = [
      { name: "qemu-server.conf", data: Buffer.from("a") },
      { name: "qemu-server.fw", data: Buffer.from("b") },
    ];
    const devices = [
      { name: "drive-scsi0", size: CLUSTER },
      { name: "drive-scsi1", size: CLUSTER },
    ];
    // Blob layout: 1 name0 (2+17), 20 data0 (2+1), 23 name1 (2+15), 40 data1 (2+1), 43 dev1 (2+12), 57 dev2 (2+12).
    const archive = craft({ configs, devices }, [{ slots: [] }]);
    archive.writeUInt32BE(2, 2044); // config 0 name points into a payload
    archive.writeUInt32BE(0, 3068 + 4); // config 1 has a name but no data
    archive.writeUInt32BE(44, 4096 + 64); // dev 2 name points into a payload
    archive.writeUInt32BE(57, 4096 + 32 * 7); // dev 7: a name but size 0
    resealHeader(archive);
    const result = await read(archive);
    expect(result.problems).toEqual([
      { offset: 2044, message: "config slot 0 name: pointer 2 is not the start of a blob" },
      { offset: 2048, message: "config slot 1 has a name pointer but no data pointer; expected both or neither" },
      { offset: 4160, message: "dev_info[2] name: pointer 44 is not the start of a blob" },
      { offset: 4320, message: "dev_info[7] has a name but size 0; expected both or neither" },
    ]);
    expect(result.header?.configs).toEqual([]);
    expect([...result.header!.devices.keys()]).toEqual([1]);
  });

  it("reports duplicate and unsafe names, dev_id 0 and 255, sizes beyond 2^32 clusters", async () => {
    const archive = craft(
      {
        configs: [{ name: "qemu-server.conf", data: Buffer.from("x") }],
        devices: [
          { name: "drive-scsi0", size: CLUSTER },
          { name: "drive-scsi1", size: CLUSTER },
        ],
      },
      [{ slots: [] }],
    );
    // Blobs: 1 config name (2+17), 20 data (2+1), 23 "drive-scsi0\0", 37 "drive-scsi1\0".
    archive.writeUInt32BE(23, 4096); // dev_info[0] in use
    archive.writeUInt32BE(1, 4096 + 12);
    archive.writeUInt32BE(23, 4096 + 64); // dev 2 reuses dev 1's name
    archive.writeUInt32BE(37, 4096 + 32 * 255); // dev 255 in use
    archive.writeUInt32BE(CLUSTER, 4096 + 32 * 255 + 12);
    archive.writeUInt32BE(37, 4096 + 32 * 9); // dev 9: 2^48 + 2^32 bytes, more than 2^32 clusters
    archive.writeUInt32BE(0x10001, 4096 + 32 * 9 + 8);
    archive.write("/", 12288 + 39 + 5, "latin1"); // "drive-scsi1" becomes "drive/scsi1"
    resealHeader(archive);
    const result = await read(archive);
    expect(result.problems.map((problem) => [problem.offset, problem.message])).toEqual([
      [4096, "dev_info[0] is in use; dev_id 0 is reserved and its entry must be zero"],
      [4160, 'dev_info[2] name "drive-scsi0" is used by an earlier device; expected unique names'],
      [4392, `dev_info[9] size ${2 ** 48 + 2 ** 32}; expected at most ${2 ** 48} (2^32 clusters)`],
      [12256, "dev_id 255 is in use; expected 1..254 (Proxmox's tools skip 255)"],
      [12256, 'dev_info[255] name "drive/scsi1" contains whitespace or "/"; expected a name matching \\S+ without "/"'],
    ]);

    // The encoder refuses such a name, so one byte of a harmless one is changed.
    const config = craft({ configs: [{ name: "..-etc", data: Buffer.from("x") }], devices: [] }, []);
    config.write("/", 12288 + 3 + 2, "latin1");
    resealHeader(config);
    expect((await read(config)).problems).toEqual([
      { offset: 2044, message: 'config slot 0 name "../etc" contains "/"; expected a plain file name' },
    ]);

    // Extraction writes nothing for such a header, least of all outside its directory.
    const root = await mkdtemp(join(tmpdir(), "vmabackup-reader-"));
    try {
      const extracted = await extractArchive(chunked(config), {
        dir: join(root, "out"),
        sparse: true,
        allowIncomplete: false,
      });
      expect(extracted).toMatchObject({ ok: false, files: [], problemCount: 1 });
      expect(await readdir(root)).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe("extent checks", () => {
  const device = { devices: [{ name: "drive-scsi0", size: 4 * CLUSTER + 5 * 512 }] }; // 5 clusters, the last one 2560 bytes

  it("accepts clusters in any order, devices interleaved and empty extents", async () => {
    const archive = craft(
      {
        devices: [
          { name: "a", size: 2 * CLUSTER },
          { name: "b", size: 3 * CLUSTER },
        ],
      },
      [
        { slots: [] },
        {
          slots: [
            { devId: 2, clusterNum: 2, mask: 0x8001 },
            { devId: 1, clusterNum: 1, mask: 0 },
            { devId: 2, clusterNum: 0, mask: 0xffff },
          ],
        },
        {
          slots: [
            { devId: 1, clusterNum: 0, mask: 0x0f0f },
            { devId: 2, clusterNum: 1, mask: 0x1000 },
          ],
        },
      ],
    );
    const result = await read(archive);
    expect(result.problems).toEqual([]);
    expect(result.summary).toMatchObject({ extents: 3, clusters: 5, storedBlocks: 2 + 16 + 8 + 1, missing: [] });
    const b = result.disks.get(2)!;
    expect(b.subarray(2 * CLUSTER, 2 * CLUSTER + BLOCK).equals(Buffer.alloc(BLOCK, ((2 * 16) % 251) + 1))).toBe(true);
    expect(b.subarray(2 * CLUSTER + BLOCK, 3 * CLUSTER - BLOCK).equals(Buffer.alloc(CLUSTER - 2 * BLOCK))).toBe(true);
    expect(b.subarray(3 * CLUSTER - BLOCK).equals(Buffer.alloc(BLOCK, ((2 * 16 + 15) % 251) + 1))).toBe(true);
  });

  it("reports the reserved field, block_count, unused slots and reserved slot bits", async () => {
    const archive = craft(device, [
      {
        slots: [
          { devId: 1, clusterNum: 0, mask: 0x0003 },
          { devId: 1, clusterNum: 1, mask: 0 },
        ],
      },
    ]);
    const extent = HEADER_SIZE;
    const reserved = Buffer.from(archive);
    reserved.writeUInt16BE(1, extent + 4);
    resealExtent(reserved, extent);
    const reservedResult = await read(reserved);
    expect(reservedResult.problems[0]).toEqual({
      offset: extent + 4,
      message: "extent reserved field is 1; expected 0",
    });
    // The extent is not used, so its clusters are missing too.
    expect(reservedResult.summary.clusters).toBe(0);

    const count = Buffer.concat([archive, Buffer.alloc(BLOCK)]);
    count.writeUInt16BE(3, extent + 6);
    resealExtent(count, extent);
    expect((await read(count)).problems[0]).toEqual({
      offset: extent + 6,
      message: "block_count 3, but the slot masks store 2 blocks; expected them equal",
    });

    const unused = Buffer.from(archive);
    unused.writeUInt32BE(7, slotOffset(extent, 5) + 4);
    unused[slotOffset(extent, 1) + 2] = 0x40;
    resealExtent(unused, extent);
    expect((await read(unused)).problems.slice(0, 2)).toEqual([
      { offset: slotOffset(extent, 1) + 2, message: "blockinfo slot 1 reserved bits are 64; expected 0" },
      { offset: slotOffset(extent, 5), message: "blockinfo slot 5 has dev_id 0 (unused) but is not all zero" },
    ]);
  });

  it("reports unknown dev_ids, clusters past the end, duplicates and mask bits past the end", async () => {
    const archive = craft(device, [
      {
        slots: [
          { devId: 1, clusterNum: 0, mask: 0x0001 },
          { devId: 3, clusterNum: 1, mask: 0x0001 }, // dev_id not in the table
          { devId: 1, clusterNum: 5, mask: 0 }, // beyond the 5 clusters
          { devId: 1, clusterNum: 0, mask: 0x0002 }, // written twice
          { devId: 1, clusterNum: 4, mask: 0x0002 }, // block 1 starts past 2560 bytes
        ],
      },
      {
        slots: [
          { devId: 1, clusterNum: 3, mask: 0xffff },
          { devId: 1, clusterNum: 1, mask: 0xffff },
        ],
      },
    ]);
    const first = HEADER_SIZE;
    const result = await read(archive);
    expect(result.problems).toEqual([
      {
        offset: slotOffset(first, 1),
        message: "blockinfo slot 1 names dev_id 3, which is not in the header's device table",
      },
      {
        offset: slotOffset(first, 2),
        message: "blockinfo slot 2: cluster 5 is beyond the end of drive-scsi0 (size 264704, clusters 0..4)",
      },
      {
        offset: slotOffset(first, 3),
        message: "blockinfo slot 3: cluster 0 of drive-scsi0 was already written; expected each cluster once",
      },
      {
        offset: slotOffset(first, 4),
        message:
          "blockinfo slot 4: mask 0x0002 of cluster 4 stores blocks past the end of drive-scsi0 (size 264704); " +
          "expected only bits of 0x0001",
      },
    ]);
    // Accepted: clusters 0, 4, 3 and 1; the rejected slots' data is skipped, so the next extent is still found.
    expect(result.summary.clusters).toBe(4);
    expect(result.summary.missing.map(describeMissing)).toEqual(["drive-scsi0: cluster 2 missing (1 of 5)"]);
    // The first copy of cluster 0 wins.
    expect(result.disks.get(1)![0]).toBe(1);
  });

  it("is strict about mask 0xffff on the last partial cluster too", async () => {
    const archive = craft(device, [{ slots: [{ devId: 1, clusterNum: 4, mask: 0xffff }] }]);
    const result = await read(archive);
    expect(result.problems).toEqual([
      {
        offset: slotOffset(HEADER_SIZE, 0),
        message:
          "blockinfo slot 0: mask 0xffff of cluster 4 stores blocks past the end of drive-scsi0 (size 264704); " +
          "expected only bits of 0x0001",
      },
    ]);
  });

  it("checks vmstate order only", async () => {
    // "vmstate" is refused by the encoder, so it is written as "vmstatf" and patched (blob at 15, payload at 17).
    const archive = craft(
      {
        devices: [
          { name: "drive-scsi0", size: CLUSTER },
          { name: "vmstatf", size: 1024 },
        ],
      },
      [
        {
          slots: [
            { devId: 2, clusterNum: 0, mask: 1 },
            { devId: 2, clusterNum: 1, mask: 1 },
            { devId: 2, clusterNum: 3, mask: 0 },
          ],
        },
        { slots: [{ devId: 1, clusterNum: 0, mask: 0 }] },
      ],
    );
    archive.write("e", 12288 + 17 + 6, "latin1");
    resealHeader(archive);
    const result = await read(archive);
    expect(result.header!.devices.get(2)).toMatchObject({ name: "vmstate", isVmstate: true });
    expect(result.problems).toEqual([
      {
        offset: slotOffset(HEADER_SIZE, 2),
        message: "blockinfo slot 2: vmstate cluster 3 out of order; expected cluster 2",
      },
    ]);
    expect(result.summary.missing).toEqual([]);
  });

  it("reports 1..511 trailing bytes, trailing garbage and data cut short", async () => {
    const archive = craft(device, [{ slots: [{ devId: 1, clusterNum: 0, mask: 0x0101 }] }]);
    const end = archive.length;
    const trailing = await read(Buffer.concat([archive, Buffer.alloc(100)]));
    expect(trailing.problems).toEqual([
      {
        offset: end,
        message: "the archive ends 100 bytes into an extent header; expected 512 bytes or the end of the archive",
      },
    ]);

    const garbage = await read(Buffer.concat([archive, Buffer.alloc(1024, 0x55)]));
    expect(garbage.problems).toEqual([
      {
        offset: end,
        message: 'expected an extent header (magic "56 4d 41 45") or the end of the archive, found "55 55 55 55"',
      },
      {
        offset: end + 512,
        message: `512 bytes after the unreadable extent header at ${end} up to the end of the archive were not read`,
      },
    ]);

    const cut = await read(archive.subarray(0, end - 100));
    expect(cut.problems).toEqual([
      {
        offset: HEADER_SIZE,
        message:
          `the archive ends inside the extent at ${HEADER_SIZE}: its header announces 8192 data bytes, only ` +
          `8092 follow`,
      },
    ]);
    expect(cut.summary.clusters).toBe(0);
  });
});

describe("damaged archives from the service's writer", () => {
  const disks = [
    { name: "drive-scsi0", data: diskData(70 * CLUSTER + 3 * 512, 1) },
    { name: "drive-virtio1", data: diskData(80 * CLUSTER, 2) },
  ];

  it("reads the undamaged archive back byte for byte", async () => {
    const archive = await writeArchive(disks, { configs: [["qemu-server.conf", Buffer.from("memory: 1024\n")]] });
    const result = await read(archive);
    expect(result.problems).toEqual([]);
    expect(result.summary.missing).toEqual([]);
    expect(result.disks.get(1)!.equals(disks[0]!.data)).toBe(true);
    expect(result.disks.get(2)!.equals(disks[1]!.data)).toBe(true);
  });

  it("a flipped byte in the header: checksum mismatch at 0, nothing after it trusted", async () => {
    const archive = await writeArchive(disks);
    archive[24]! ^= 0x01; // inside ctime
    const result = await read(archive);
    expect(result.problems).toHaveLength(1);
    expect(result.problems[0]!.offset).toBe(0);
    expect(result.problems[0]!.message).toMatch(
      /^header checksum mismatch: md5 of bytes 0\.\.12799 is [0-9a-f]{32}, the header stores [0-9a-f]{32}$/,
    );
    expect(result.header).toBeUndefined();
    expect(result.extents).toEqual([]);
  });

  it(
    "a flipped byte in an extent header: checksum mismatch there, the rest still read, its clusters " + "missing",
    async () => {
      const archive = await writeArchive(disks);
      const offsets = extentOffsets(archive);
      const damaged = offsets[1]!;
      const lost = Buffer.from(archive.subarray(damaged, damaged + 512));
      archive[slotOffset(damaged, 3) + 7]! ^= 0x10; // a cluster number
      const result = await read(archive);
      expect(result.problems[0]!.offset).toBe(damaged);
      expect(result.problems[0]!.message).toMatch(
        /^extent header checksum mismatch: md5 of bytes \d+\.\.\d+ is [0-9a-f]{32}, the header stores [0-9a-f]{32}$/,
      );
      expect(result.problems[1]).toEqual({
        offset: damaged + 512,
        message:
          `${offsets[2]! - damaged - 512} bytes after the unreadable extent header at ${damaged} were skipped; ` +
          `the next valid extent header is at ${offsets[2]}`,
      });
      expect(result.problems).toHaveLength(2);
      expect(result.summary.extents).toBe(offsets.length - 1);
      // Exactly the 58 clusters of the damaged extent are missing.
      const lostClusters = Array.from({ length: 58 }, (_, slot) => lost.readUInt32BE(40 + 8 * slot + 4));
      const missing = result.summary.missing.flatMap((device) =>
        [...device.allRanges()].flatMap((range) =>
          Array.from({ length: range.last - range.first + 1 }, (_, i) => range.first + i),
        ),
      );
      expect(missing).toEqual(lostClusters);
    },
  );

  it("a truncated file: the cut extent is named, its clusters and all later ones missing", async () => {
    const archive = await writeArchive(disks);
    const offsets = extentOffsets(archive);
    const cutAt = offsets[1]! + 512 + 10 * BLOCK + 123;
    const result = await read(archive.subarray(0, cutAt));
    expect(result.problems).toHaveLength(1);
    expect(result.problems[0]!.offset).toBe(offsets[1]);
    expect(result.problems[0]!.message).toMatch(
      new RegExp(
        `^the archive ends inside the extent at ${offsets[1]}: its header announces \\d+ data bytes, only ` +
          `${10 * BLOCK + 123} follow$`,
      ),
    );
    expect(result.summary.clusters).toBe(58);
    expect(result.summary.missing.map(describeMissing)).toEqual([
      "drive-scsi0: clusters 58-70 missing (13 of 71)",
      "drive-virtio1: clusters 0-79 missing (80 of 80)",
    ]);
  });

  it("a duplicated extent: every cluster of the copy is reported as written twice", async () => {
    const archive = await writeArchive(disks);
    const offsets = extentOffsets(archive);
    const copy = archive.subarray(offsets[0]!, offsets[1]!);
    const doubled = Buffer.concat([archive.subarray(0, offsets[1]!), copy, archive.subarray(offsets[1]!)]);
    const result = await read(doubled);
    expect(result.problems).toHaveLength(58);
    expect(result.problems[0]).toEqual({
      offset: slotOffset(offsets[1]!, 0),
      message: "blockinfo slot 0: cluster 0 of drive-scsi0 was already written; expected each cluster once",
    });
    expect(result.problems[57]!.offset).toBe(slotOffset(offsets[1]!, 57));
    expect(result.summary.missing).toEqual([]);
    expect(result.disks.get(1)!.equals(disks[0]!.data)).toBe(true);
  });

  it("an extent from another archive: uuid mismatch at its uuid field, skipped by its block_count", async () => {
    const archive = await writeArchive(disks, { uuid: Buffer.alloc(16, 0x11) });
    const other = await writeArchive(disks, { uuid: Buffer.alloc(16, 0x22) });
    const offsets = extentOffsets(archive);
    const foreign = other.subarray(offsets[1]!, offsets[2]!);
    const mixed = Buffer.concat([archive.subarray(0, offsets[1]!), foreign, archive.subarray(offsets[2]!)]);
    const result = await read(mixed);
    expect(result.problems).toEqual([
      {
        offset: offsets[1]! + 8,
        message:
          `extent uuid ${"22".repeat(16)} differs from the archive uuid ${"11".repeat(16)}: an extent of ` +
          `another archive`,
      },
    ]);
    expect(result.summary.extents).toBe(offsets.length);
    expect(result.summary.missing.map((device) => device.count)).toEqual([13, 45]);
  });

  it("reads archives with clusters shuffled across devices (property)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 6 * 128 }), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        async (sectorCounts, seed) => {
          const shaped = sectorCounts.map((sectors, index) => ({
            name: `drive-scsi${index}`,
            data: diskData(sectors * 512, seed + index),
          }));
          const pairs = shaped.flatMap((disk, index) =>
            Array.from({ length: Math.ceil(disk.data.length / CLUSTER) }, (_, cluster) => [index, cluster] as const),
          );
          const order = fc.sample(fc.shuffledSubarray(pairs, { minLength: pairs.length, maxLength: pairs.length }), {
            numRuns: 1,
            seed,
          })[0]!;
          const archive = await writeArchive(shaped, { order });
          const result = await read(archive, [3000, 70000]);
          expect(result.problems).toEqual([]);
          expect(result.summary.missing).toEqual([]);
          for (const [index, disk] of shaped.entries())
            expect(result.disks.get(index + 1)!.equals(disk.data)).toBe(true);
        },
      ),
      { numRuns: 30 },
    );
  });
});

describe("extraction of stored zero blocks", () => {
  it("leaves every all-zero stored block a hole with --sparse, whatever the input chunks, and writes it without", async () => {
    const data = randomBytes(4 * CLUSTER);
    const zeroBlock = (cluster: number, block: number): void =>
      void data.fill(0, cluster * CLUSTER + block * BLOCK, cluster * CLUSTER + (block + 1) * BLOCK);
    // Cluster 1: zero first and last blocks, and blocks whose only non-zero byte is their first or last.
    for (const block of [0, 7, 8, 15]) zeroBlock(1, block);
    data[CLUSTER + 7 * BLOCK] = 1;
    data[CLUSTER + 9 * BLOCK - 1] = 1;
    // Cluster 2: all zero, yet stored.
    for (let block = 0; block < 16; block++) zeroBlock(2, block);
    let nonZeroBlocks = 0;
    for (let block = 0; block < data.length / BLOCK; block++) {
      if (data.subarray(block * BLOCK, (block + 1) * BLOCK).some((byte) => byte !== 0)) nonZeroBlocks += 1;
    }
    expect(nonZeroBlocks).toBe(16 + 14 + 0 + 16);
    const archive = await writeArchive([{ name: "drive-scsi0", data }], { storeZeroBlocks: true });

    const root = await mkdtemp(join(tmpdir(), "vmabackup-reader-"));
    try {
      for (const [index, chunkSizes] of [[archive.length], [3000, 70000]].entries()) {
        for (const sparse of [true, false]) {
          const dir = join(root, `out-${index}-${sparse}`);
          const extracted = await extractArchive(chunked(archive, chunkSizes), { dir, sparse, allowIncomplete: false });
          expect(extracted.ok).toBe(true);
          const image = join(dir, "disk-drive-scsi0.raw");
          expect((await readFile(image)).equals(data)).toBe(true);
          const allocated = (await stat(image)).blocks * 512;
          if (sparse) expect(allocated).toBeLessThanOrEqual(nonZeroBlocks * BLOCK);
          else expect(allocated).toBeGreaterThanOrEqual(data.length);
        }
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
