import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BLOCK_SIZE, CLUSTER_SIZE, MAX_HEADER_SIZE } from "../src/vma/constants.js";
import { popcount16 } from "../src/vma/block-mask.js";
import { encodeExtentHeader, encodeZeroExtentHeaders } from "../src/vma/encode-extent.js";
import { encodeHeader } from "../src/vma/encode-header.js";
import { checkHeaderPlan, headerSizeForPlan, VmaLimitError } from "../src/vma/encode-limits.js";
import { VmaUsageError } from "../src/vma/writer-errors.js";
import { readVma } from "../src/vma/reader.js";
import { VmaWriter, type VmaSink } from "../src/vma/writer.js";

// The worked example of docs/vma-format.md section 9.
const EXAMPLE_UUID = Uint8Array.from(Buffer.from("00112233445566778899aabbccddeeff", "hex"));
const EXAMPLE_CTIME = 1700000000;
const EXAMPLE_CONFIG = { name: "qemu-server.conf", data: Buffer.from("memory: 512\n") };
const EXAMPLE_DEVICE = { name: "drive-scsi0", size: 131072 };

const md5 = (bytes: Uint8Array): string => createHash("md5").update(bytes).digest("hex");
const sha256 = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex");
const filled = (value: number, size = CLUSTER_SIZE): Uint8Array => new Uint8Array(size).fill(value);

/** Keeps what the writer hands over, by reference, one entry per sink call. */
class MemorySink implements VmaSink {
  readonly calls: Uint8Array[][] = [];

  async write(chunks: readonly Uint8Array[]): Promise<void> {
    this.calls.push([...chunks]);
  }

  bytes(): Uint8Array {
    return Buffer.concat(this.calls.flat());
  }
}

function writer(sink: VmaSink = new MemorySink()): VmaWriter {
  return new VmaWriter(sink, { uuid: EXAMPLE_UUID, ctime: EXAMPLE_CTIME });
}

async function expectUsageError(action: () => unknown, pattern: RegExp): Promise<void> {
  await expect(async () => action()).rejects.toThrow(pattern);
  await expect(async () => action()).rejects.toBeInstanceOf(VmaUsageError);
}

function expectLimitError(action: () => unknown, field: string, pattern: RegExp): void {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(VmaLimitError);
  expect((caught as VmaLimitError).field).toBe(field);
  expect((caught as VmaLimitError).message).toMatch(pattern);
}

interface ParsedExtent {
  readonly slots: { devId: number; clusterNum: number; mask: number }[];
  readonly blockCount: number;
}

/**
 * A minimal independent check of the writer's output (not the project's
 * reader): verifies both md5s, walks the extents and rebuilds the disks.
 */
function parseArchive(bytes: Uint8Array): { extents: ParsedExtent[]; disks: Map<number, Uint8Array> } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerSize = view.getUint32(56);
  const header = Uint8Array.from(bytes.subarray(0, headerSize));
  const headerMd5 = Buffer.from(header.subarray(32, 48)).toString("hex");
  header.fill(0, 32, 48);
  expect(md5(header)).toBe(headerMd5);
  const disks = new Map<number, Uint8Array>();
  for (let devId = 1; devId < 255; devId++) {
    const size = Number(view.getBigUint64(4096 + 32 * devId + 8));
    if (size !== 0) disks.set(devId, new Uint8Array(Math.ceil(size / CLUSTER_SIZE) * CLUSTER_SIZE));
  }
  const extents: ParsedExtent[] = [];
  let position = headerSize;
  while (position < bytes.byteLength) {
    const extentHeader = Uint8Array.from(bytes.subarray(position, position + 512));
    expect(Buffer.from(extentHeader.subarray(0, 6)).toString("hex")).toBe("564d41450000");
    expect(extentHeader.subarray(8, 24)).toEqual(EXAMPLE_UUID);
    const extentMd5 = Buffer.from(extentHeader.subarray(24, 40)).toString("hex");
    extentHeader.fill(0, 24, 40);
    expect(md5(extentHeader)).toBe(extentMd5);
    const blockCount = view.getUint16(position + 6);
    let data = position + 512;
    const slots: ParsedExtent["slots"] = [];
    for (let slot = 0; slot < 59; slot++) {
      const entry = position + 40 + 8 * slot;
      const devId = view.getUint8(entry + 3);
      if (devId === 0) {
        expect(view.getBigUint64(entry)).toBe(0n);
        continue;
      }
      const mask = view.getUint16(entry);
      const clusterNum = view.getUint32(entry + 4);
      slots.push({ devId, clusterNum, mask });
      for (let block = 0; block < 16; block++) {
        if ((mask & (1 << block)) === 0) continue;
        disks.get(devId)!.set(bytes.subarray(data, data + BLOCK_SIZE), clusterNum * CLUSTER_SIZE + block * BLOCK_SIZE);
        data += BLOCK_SIZE;
      }
    }
    expect(data - position - 512).toBe(blockCount * BLOCK_SIZE);
    extents.push({ slots, blockCount });
    position = data;
  }
  expect(position).toBe(bytes.byteLength);
  return { extents, disks };
}

describe("encodeHeader", () => {
  const example = (): Uint8Array =>
    encodeHeader({ uuid: EXAMPLE_UUID, ctime: EXAMPLE_CTIME, configs: [EXAMPLE_CONFIG], devices: [EXAMPLE_DEVICE] });

  it("reproduces the header of the worked example", () => {
    const header = example();
    expect(header.byteLength).toBe(12800);
    expect(Buffer.from(header.subarray(0, 0x40)).toString("hex")).toBe(
      "564d410000000001" +
        "00112233445566778899aabbccddeeff" +
        "000000006553f100" +
        "5ff1d20c4d245a189f086be21e3e00a8" +
        "00003000" +
        "00000030" +
        "00003200" +
        "00000000",
    );
    expect(Buffer.from(header.subarray(0x7fc, 0x804)).toString("hex")).toBe("0000000100000000");
    expect(Buffer.from(header.subarray(0xbfc, 0xc04)).toString("hex")).toBe("0000001400000000");
    expect(Buffer.from(header.subarray(0x1020, 0x1040)).toString("hex")).toBe(
      `00000022000000000000000000020000${"00".repeat(16)}`,
    );
    expect(Buffer.from(header.subarray(0x3000, 0x3030)).toString("hex")).toBe(
      "001100" +
        Buffer.from("qemu-server.conf\0").toString("hex") +
        "0c00" +
        Buffer.from("memory: 512\n").toString("hex") +
        "0c00" +
        Buffer.from("drive-scsi0\0").toString("hex"),
    );
    expect(header.subarray(0x3030).every((byte) => byte === 0)).toBe(true);
    const zeroed = Uint8Array.from(header);
    zeroed.fill(0, 32, 48);
    expect(md5(zeroed)).toBe("5ff1d20c4d245a189f086be21e3e00a8");
  });

  it("stores ctime as a signed 64-bit value", () => {
    const header = encodeHeader({ uuid: EXAMPLE_UUID, ctime: -2, configs: [], devices: [] });
    expect(Buffer.from(header.subarray(24, 32)).toString("hex")).toBe("fffffffffffffffe");
  });

  it("keeps the reserved zero byte when there is nothing else, so header_size > 12288", () => {
    const header = encodeHeader({ uuid: EXAMPLE_UUID, ctime: 0, configs: [], devices: [] });
    const view = new DataView(header.buffer);
    expect(view.getUint32(52)).toBe(1);
    expect(view.getUint32(56)).toBe(12800);
  });

  it("places device ids 1..N, and their sizes as u64, in dev_info", () => {
    const devices = [
      { name: "drive-scsi0", size: 512 },
      { name: "drive-virtio1", size: 2 ** 40 + 512 },
    ];
    const header = encodeHeader({ uuid: EXAMPLE_UUID, ctime: 0, configs: [], devices });
    const view = new DataView(header.buffer);
    expect(view.getBigUint64(4096)).toBe(0n);
    expect(view.getBigUint64(4096 + 32 + 8)).toBe(512n);
    expect(view.getBigUint64(4096 + 64 + 8)).toBe(BigInt(2 ** 40 + 512));
    const namePointer = view.getUint32(4096 + 64);
    const length = view.getUint16(12288 + namePointer, true);
    expect(Buffer.from(header.subarray(12288 + namePointer + 2, 12288 + namePointer + 2 + length)).toString()).toBe(
      "drive-virtio1\0",
    );
  });

  it("has the size headerSizeForPlan predicts", () => {
    const name = fc
      .string({ minLength: 1, maxLength: 40 })
      .filter((text) => !/[\s/\0]/u.test(text) && text !== "vmstate" && text !== "." && text !== "..");
    fc.assert(
      fc.property(
        fc.uniqueArray(name, { maxLength: 6 }),
        fc.uniqueArray(name, { maxLength: 6 }),
        fc.array(fc.integer({ min: 0, max: 3000 }), { minLength: 6, maxLength: 6 }),
        (configNames, deviceNames, sizes) => {
          const configs = configNames.map((configName, index) => ({
            name: configName,
            data: new Uint8Array(sizes[index]!),
          }));
          const devices = deviceNames.map((deviceName) => ({ name: deviceName, size: 512 }));
          const header = encodeHeader({ uuid: EXAMPLE_UUID, ctime: 0, configs, devices });
          const plan = {
            configs: configs.map((config) => ({ name: config.name, size: config.data.byteLength })),
            devices,
          };
          expect(header.byteLength).toBe(headerSizeForPlan(plan));
          expect(header.byteLength % 512).toBe(0);
        },
      ),
      { numRuns: 50 },
    );
  });
});

describe("header limits", () => {
  const device = { name: "drive-scsi0", size: CLUSTER_SIZE };

  it("refuses a config blob over 65535 bytes, naming it", () => {
    expectLimitError(
      () =>
        checkHeaderPlan({
          configs: [
            { name: "a", size: 1 },
            { name: "b", size: 1 },
            { name: "c", size: 65536 },
          ],
          devices: [],
        }),
      "configs[2].data",
      /65536 bytes.*65535/,
    );
    expect(() => checkHeaderPlan({ configs: [{ name: "c", size: 65535 }], devices: [] })).not.toThrow();
    expectLimitError(
      () =>
        encodeHeader({
          uuid: EXAMPLE_UUID,
          ctime: 0,
          configs: [{ name: "big", data: new Uint8Array(65536) }],
          devices: [],
        }),
      "configs[0].data",
      /65535/,
    );
  });

  it("refuses a name whose blob (with NUL) is over 65535 bytes", () => {
    expectLimitError(
      () => checkHeaderPlan({ configs: [{ name: "x".repeat(65535), size: 0 }], devices: [] }),
      "configs[0].name",
      /65536 bytes/,
    );
    expectLimitError(
      () => checkHeaderPlan({ configs: [], devices: [{ name: "d".repeat(65535), size: 512 }] }),
      "devices[0].name",
      /65536/,
    );
  });

  it("refuses a header over 512 KiB and blames the configs when they alone overflow", () => {
    const configs = Array.from({ length: 8 }, (_, index) => ({ name: `c${index}`, size: 65535 }));
    expect(headerSizeForPlan({ configs, devices: [] })).toBeGreaterThan(MAX_HEADER_SIZE);
    expectLimitError(
      () => checkHeaderPlan({ configs, devices: [device] }),
      "configs",
      /header would be \d+ bytes.*524288/,
    );
    expect(() => checkHeaderPlan({ configs: configs.slice(0, 7), devices: [device] })).not.toThrow();
  });

  it("blames the devices when their names tip the header over", () => {
    const devices = Array.from({ length: 254 }, (_, index) => ({
      name: `drive-${index}-${"n".repeat(2100)}`,
      size: 512,
    }));
    expectLimitError(
      () => checkHeaderPlan({ configs: [{ name: "qemu-server.conf", size: 100 }], devices }),
      "devices",
      /header would be/,
    );
  });

  it("accepts a header of exactly 512 KiB", () => {
    // Fill the blob buffer to exactly 512000 used bytes: 12288 + 512000 = 524288.
    const configs = Array.from({ length: 7 }, (_, index) => ({ name: `c${index}`, size: 65535 }));
    const used = 1 + configs.length * (2 + 3 + 2 + 65535);
    const last = { name: "z", size: 512000 - used - (2 + 2 + 2) };
    expect(headerSizeForPlan({ configs: [...configs, last], devices: [] })).toBe(MAX_HEADER_SIZE);
    expect(() => checkHeaderPlan({ configs: [...configs, last], devices: [] })).not.toThrow();
    expectLimitError(
      () => checkHeaderPlan({ configs: [...configs, { ...last, size: last.size + 1 }], devices: [] }),
      "configs",
      /524800/,
    );
  });

  it("refuses more than 254 devices and more than 256 configs", () => {
    const devices = Array.from({ length: 255 }, (_, index) => ({ name: `drive-scsi${index}`, size: 512 }));
    expectLimitError(() => checkHeaderPlan({ configs: [], devices }), "devices", /255 devices.*254/);
    expect(() => checkHeaderPlan({ configs: [], devices: devices.slice(0, 254) })).not.toThrow();
    const configs = Array.from({ length: 257 }, (_, index) => ({ name: `c${index}`, size: 1 }));
    expectLimitError(() => checkHeaderPlan({ configs, devices: [] }), "configs", /257 configs.*256/);
  });

  it("refuses names and sizes that cannot be stored or restored", () => {
    const plan = (name: string, size = 512) => ({
      configs: [],
      devices: [
        { name: "drive-ok", size: 512 },
        { name, size },
      ],
    });
    expectLimitError(() => checkHeaderPlan(plan("drive scsi0")), "devices[1].name", /whitespace/);
    expectLimitError(() => checkHeaderPlan(plan("a/b")), "devices[1].name", /"\/"/);
    expectLimitError(() => checkHeaderPlan(plan("")), "devices[1].name", /non-empty/);
    expectLimitError(() => checkHeaderPlan(plan("vmstate")), "devices[1].name", /reserved/);
    expectLimitError(() => checkHeaderPlan(plan("drive-ok")), "devices[1].name", /used twice/);
    expectLimitError(() => checkHeaderPlan(plan("drive-x", 0)), "devices[1].size", /positive/);
    expect(() => checkHeaderPlan(plan("drive-x", 1000))).not.toThrow(); // any byte size round-trips through our reader
    expectLimitError(() => checkHeaderPlan(plan("drive-x", 2 ** 48 + 512)), "devices[1].size", /at most/);
    expectLimitError(
      () => checkHeaderPlan({ configs: [{ name: "../x", size: 1 }], devices: [] }),
      "configs[0].name",
      /plain file name/,
    );
    expectLimitError(
      () => checkHeaderPlan({ configs: [{ name: "..", size: 1 }], devices: [] }),
      "configs[0].name",
      /plain file name/,
    );
    expectLimitError(
      () =>
        checkHeaderPlan({
          configs: [
            { name: "a", size: 1 },
            { name: "a", size: 2 },
          ],
          devices: [],
        }),
      "configs[1].name",
      /used twice/,
    );
  });
});

describe("encodeExtentHeader", () => {
  it("reproduces the extent header of the worked example", () => {
    const header = encodeExtentHeader(EXAMPLE_UUID, [
      { devId: 1, clusterNum: 0, mask: 0xffff },
      { devId: 1, clusterNum: 1, mask: 0 },
    ]);
    expect(header.byteLength).toBe(512);
    expect(Buffer.from(header.subarray(0, 0x38)).toString("hex")).toBe(
      "564d414500000010" +
        "00112233445566778899aabbccddeeff" +
        "4fb5f0bb3d21d1e2ecabc7e54d872a38" +
        "ffff000100000000" +
        "0000000100000001",
    );
    expect(header.subarray(0x38).every((byte) => byte === 0)).toBe(true);
  });

  it("lays out blockinfo as mask, reserved, dev_id, cluster and counts the set bits", () => {
    const header = encodeExtentHeader(EXAMPLE_UUID, [
      { devId: 3, clusterNum: 0x01020304, mask: 0x8001 },
      { devId: 254, clusterNum: 2 ** 32 - 1, mask: 0x00f0 },
    ]);
    expect(Buffer.from(header.subarray(40, 56)).toString("hex")).toBe("8001000301020304" + "00f000feffffffff");
    expect(new DataView(header.buffer).getUint16(6)).toBe(6);
  });

  it("counts bits like a naive popcount", () => {
    for (let mask = 0; mask <= 0xffff; mask += 37) {
      expect(popcount16(mask)).toBe(mask.toString(2).replaceAll("0", "").length);
    }
    expect(popcount16(0xffff)).toBe(16);
  });

  it("refuses slots that do not fit", () => {
    const slot = { devId: 1, clusterNum: 0, mask: 0 };
    expect(() =>
      encodeExtentHeader(
        EXAMPLE_UUID,
        Array.from({ length: 60 }, () => slot),
      ),
    ).toThrow(/at most 59/);
    expect(() => encodeExtentHeader(EXAMPLE_UUID, [{ ...slot, devId: 255 }])).toThrow(/dev_id 255/);
    expect(() => encodeExtentHeader(EXAMPLE_UUID, [{ ...slot, devId: 0 }])).toThrow(/dev_id 0/);
    expect(() => encodeExtentHeader(EXAMPLE_UUID, [{ ...slot, mask: 0x10000 }])).toThrow(/16 bits/);
    expect(() => encodeExtentHeader(EXAMPLE_UUID, [{ ...slot, clusterNum: 2 ** 32 }])).toThrow(/32 bits/);
    expect(() => encodeExtentHeader(new Uint8Array(15), [])).toThrow(/16 bytes/);
  });
});

describe("VmaWriter", () => {
  it("writes the worked example byte for byte", async () => {
    const sink = new MemorySink();
    const vma = writer(sink);
    vma.addConfig(EXAMPLE_CONFIG.name, EXAMPLE_CONFIG.data);
    expect(vma.addDevice(EXAMPLE_DEVICE.name, EXAMPLE_DEVICE.size)).toBe(1);
    await vma.writeCluster(1, 0, filled(0xab), 0xffff);
    await vma.writeCluster(1, 1, filled(0), 0);
    vma.completeDevice(1);
    await vma.finish();

    const file = sink.bytes();
    expect(file.byteLength).toBe(78848);
    expect(sha256(file)).toBe("c91d7bfd66fb43d246df75b679ec75efb49db38badc4f7948a484e2c2018da5e");
    expect(Buffer.from(file.subarray(32, 48)).toString("hex")).toBe("5ff1d20c4d245a189f086be21e3e00a8");
    expect(Buffer.from(file.subarray(12800 + 24, 12800 + 40)).toString("hex")).toBe("4fb5f0bb3d21d1e2ecabc7e54d872a38");
    // Header and the only extent go out in one vectored write: header, extent header, one data iovec.
    expect(sink.calls.map((call) => call.map((chunk) => chunk.byteLength))).toEqual([[12800, 512, 65536]]);
    expect(vma.extentCount).toBe(1);
  });

  it("takes ctime at the first flush unless it is fixed", async () => {
    const sink = new MemorySink();
    const vma = new VmaWriter(sink, { uuid: EXAMPLE_UUID });
    const before = Math.floor(Date.now() / 1000);
    await vma.finish();
    // A view of the bytes, not of their ArrayBuffer: since Node 24's 64 KiB
    // Buffer pool, Buffer.concat's result may sit inside a shared pool.
    const bytes = sink.bytes();
    const ctime = Number(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigInt64(24));
    expect(ctime).toBeGreaterThanOrEqual(before);
    expect(ctime).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
  });

  it("passes cluster data by reference and coalesces contiguous blocks", async () => {
    const sink = new MemorySink();
    const vma = writer(sink);
    vma.addDevice("drive-scsi0", 4 * CLUSTER_SIZE);
    const read = new Uint8Array(4 * CLUSTER_SIZE).fill(7);
    const cluster = (index: number) => read.subarray(index * CLUSTER_SIZE, (index + 1) * CLUSTER_SIZE);
    // Clusters 0 and 1 are adjacent in one buffer: one iovec for both.
    await vma.writeCluster(1, 0, cluster(0), 0xffff);
    await vma.writeCluster(1, 1, cluster(1), 0xffff);
    // Blocks 0,1 and 3 of cluster 2: two runs, two iovecs.
    await vma.writeCluster(1, 2, cluster(2), 0b1011);
    // A separate buffer cannot be merged.
    const other = filled(9);
    await vma.writeCluster(1, 3, other, 0x8000);
    vma.completeDevice(1);
    await vma.finish();

    const [call] = sink.calls;
    const data = call!.slice(2);
    expect(data.map((chunk) => [chunk.buffer === read.buffer, chunk.byteOffset, chunk.byteLength])).toEqual([
      [true, 0, 2 * CLUSTER_SIZE + 2 * BLOCK_SIZE],
      [true, 2 * CLUSTER_SIZE + 3 * BLOCK_SIZE, BLOCK_SIZE],
      [false, 15 * BLOCK_SIZE, BLOCK_SIZE],
    ]);
    expect(data[2]!.buffer).toBe(other.buffer);
    const { disks, extents } = parseArchive(sink.bytes());
    expect(extents[0]!.blockCount).toBe(16 + 16 + 3 + 1);
    const expected = new Uint8Array(4 * CLUSTER_SIZE).fill(7);
    expected.fill(0, 2 * CLUSTER_SIZE + 2 * BLOCK_SIZE, 2 * CLUSTER_SIZE + 3 * BLOCK_SIZE);
    expected.fill(0, 2 * CLUSTER_SIZE + 4 * BLOCK_SIZE, 3 * CLUSTER_SIZE + 15 * BLOCK_SIZE);
    expected.fill(9, 3 * CLUSTER_SIZE + 15 * BLOCK_SIZE);
    expect(Buffer.compare(disks.get(1)!, expected)).toBe(0);
  });

  it("flushes an extent once 58 slots are used", async () => {
    for (const clusters of [58, 59, 117]) {
      const sink = new MemorySink();
      const vma = writer(sink);
      vma.addDevice("drive-scsi0", clusters * CLUSTER_SIZE);
      const zero = filled(0);
      for (let clusterNum = 0; clusterNum < clusters; clusterNum++) {
        await vma.writeCluster(1, clusterNum, zero, 0);
        // The first extent leaves as soon as its 58th slot is filled.
        if (clusterNum === 57) expect(vma.extentCount).toBe(1);
      }
      vma.completeDevice(1);
      await vma.finish();
      const { extents } = parseArchive(sink.bytes());
      const expected = { 58: [58], 59: [58, 1], 117: [58, 58, 1] }[clusters as 58 | 59 | 117];
      expect(extents.map((extent) => extent.slots.length)).toEqual(expected);
      expect(extents.flatMap((extent) => extent.slots.map((slot) => slot.clusterNum))).toEqual(
        Array.from({ length: clusters }, (_, index) => index),
      );
      expect(vma.extentCount).toBe(expected.length);
    }
  });

  it("writes one empty extent for an archive without clusters", async () => {
    const sink = new MemorySink();
    const vma = writer(sink);
    vma.addConfig("qemu-server.conf", Buffer.from("memory: 512\n"));
    await vma.finish();
    const file = sink.bytes();
    expect(file.byteLength).toBe(12800 + 512);
    const extent = file.subarray(12800);
    expect(Buffer.from(extent.subarray(0, 8)).toString("hex")).toBe("564d414500000000");
    expect(extent.subarray(40).every((byte) => byte === 0)).toBe(true);
    expect(parseArchive(file).extents).toEqual([{ slots: [], blockCount: 0 }]);
  });

  it("rebuilds interleaved, shuffled devices exactly", async () => {
    const deviceSizes = fc.array(
      fc.integer({ min: 1, max: 4 * 128 }).map((sectors) => sectors * 512),
      { minLength: 1, maxLength: 3 },
    );
    await fc.assert(
      fc.asyncProperty(deviceSizes, fc.integer(), async (sizes, seed) => {
        const sink = new MemorySink();
        const vma = writer(sink);
        for (const [index, size] of sizes.entries()) vma.addDevice(`drive-scsi${index}`, size);
        const work = sizes.flatMap((size, index) =>
          Array.from({ length: Math.ceil(size / CLUSTER_SIZE) }, (_, clusterNum) => ({ devId: index + 1, clusterNum })),
        );
        let state = seed >>> 0;
        const random = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
        for (let index = work.length - 1; index > 0; index--) {
          const other = random() % (index + 1);
          [work[index], work[other]] = [work[other]!, work[index]!];
        }
        const expected = sizes.map((size) => new Uint8Array(Math.ceil(size / CLUSTER_SIZE) * CLUSTER_SIZE));
        for (const { devId, clusterNum } of work) {
          const size = sizes[devId - 1]!;
          const blocksInside = Math.min(16, Math.ceil((size - clusterNum * CLUSTER_SIZE) / BLOCK_SIZE));
          const mask = random() & ((1 << blocksInside) - 1);
          const data = new Uint8Array(CLUSTER_SIZE);
          for (let block = 0; block < 16; block++) {
            if ((mask & (1 << block)) !== 0)
              data.fill((random() % 255) + 1, block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE);
          }
          expected[devId - 1]!.set(data, clusterNum * CLUSTER_SIZE);
          await vma.writeCluster(devId, clusterNum, data, mask);
        }
        for (const index of sizes.keys()) vma.completeDevice(index + 1);
        await vma.finish();
        const { disks, extents } = parseArchive(sink.bytes());
        expect(extents.every((extent) => extent.slots.length <= 58)).toBe(true);
        for (const index of sizes.keys()) expect(Buffer.compare(disks.get(index + 1)!, expected[index]!)).toBe(0);
      }),
      { numRuns: 20 },
    );
  });

  describe("last partial cluster", () => {
    // 70144 bytes: cluster 1 holds block 0 fully and 512 bytes of block 1.
    const setup = () => {
      const sink = new MemorySink();
      const vma = writer(sink);
      vma.addDevice("drive-scsi0", 70144);
      return { sink, vma };
    };

    it("accepts the blocks that start inside the device", async () => {
      const { sink, vma } = setup();
      await vma.writeCluster(1, 0, filled(1), 0xffff);
      const last = new Uint8Array(CLUSTER_SIZE);
      last.fill(2, 0, 70144 - CLUSTER_SIZE);
      await vma.writeCluster(1, 1, last, 0x0003);
      vma.completeDevice(1);
      await vma.finish();
      const { extents } = parseArchive(sink.bytes());
      expect(extents[0]!.slots[1]).toEqual({ devId: 1, clusterNum: 1, mask: 0x0003 });
      expect(extents[0]!.blockCount).toBe(18);
    });

    it("refuses mask bits of blocks past the end, including a full mask", async () => {
      const { vma } = setup();
      await expectUsageError(
        () => vma.writeCluster(1, 1, filled(0), 0x0004),
        /mask 0x0004 .*past the end.*size 70144.*0x0003/,
      );
      await expectUsageError(() => vma.writeCluster(1, 1, filled(0), 0xffff), /past the end/);
      // The refused calls did not count as written.
      await vma.writeCluster(1, 1, filled(0), 0x0001);
    });
  });

  describe("misuse", () => {
    const setup = () => {
      const vma = writer();
      vma.addDevice("drive-scsi0", 3 * CLUSTER_SIZE);
      return vma;
    };

    it("refuses unknown device ids", async () => {
      const vma = setup();
      for (const devId of [0, 2, 255, 1.5, -1]) {
        await expectUsageError(
          () => vma.writeCluster(devId, 0, filled(0), 0),
          new RegExp(`unknown dev_id ${devId}: devices are 1..1`),
        );
      }
      expect(() => vma.completeDevice(2)).toThrow(VmaUsageError);
    });

    it("refuses cluster numbers outside the device", async () => {
      const vma = setup();
      for (const clusterNum of [3, -1, 0.5, 2 ** 32]) {
        await expectUsageError(
          () => vma.writeCluster(1, clusterNum, filled(0), 0),
          /outside device "drive-scsi0" \(dev_id 1\).*0\.\.2/,
        );
      }
    });

    it("refuses a cluster written twice", async () => {
      const vma = setup();
      await vma.writeCluster(1, 1, filled(0), 0);
      await expectUsageError(
        () => vma.writeCluster(1, 1, filled(0), 0),
        /cluster 1 of device "drive-scsi0" \(dev_id 1\) was already written/,
      );
    });

    it("refuses data that is not one cluster and masks that are not 16 bits", async () => {
      const vma = setup();
      await expectUsageError(() => vma.writeCluster(1, 0, new Uint8Array(4096), 1), /4096 bytes; a cluster is 65536/);
      await expectUsageError(() => vma.writeCluster(1, 0, filled(0), 0x10000), /not a 16-bit block mask/);
      await expectUsageError(() => vma.writeCluster(1, 0, filled(0), -1), /not a 16-bit block mask/);
    });

    it("names the first missing cluster when a device is completed early", async () => {
      const vma = setup();
      await vma.writeCluster(1, 0, filled(0), 0);
      await vma.writeCluster(1, 2, filled(0), 0);
      expect(() => vma.completeDevice(1)).toThrow(/incomplete: cluster 1 was not written \(1 of 3 missing\)/);
    });

    it("refuses clusters after completeDevice and a second completeDevice", async () => {
      const vma = setup();
      for (let clusterNum = 0; clusterNum < 3; clusterNum++) await vma.writeCluster(1, clusterNum, filled(0), 0);
      vma.completeDevice(1);
      await expectUsageError(() => vma.writeCluster(1, 0, filled(0), 0), /already completed/);
      expect(() => vma.completeDevice(1)).toThrow(/already completed/);
    });

    it("refuses to finish with a device not completed", async () => {
      const vma = setup();
      vma.addDevice("drive-scsi1", CLUSTER_SIZE);
      for (let clusterNum = 0; clusterNum < 3; clusterNum++) await vma.writeCluster(1, clusterNum, filled(0), 0);
      vma.completeDevice(1);
      await expectUsageError(() => vma.finish(), /device "drive-scsi1" \(dev_id 2\) was not completed/);
    });

    it("fixes the header at the first cluster", async () => {
      const vma = setup();
      await vma.writeCluster(1, 0, filled(0), 0);
      expect(() => vma.addDevice("drive-scsi1", CLUSTER_SIZE)).toThrow(/addDevice after the first cluster/);
      expect(() => vma.addConfig("qemu-server.conf", new Uint8Array(1))).toThrow(/addConfig after the first cluster/);
    });

    it("refuses everything after finish", async () => {
      const vma = writer();
      await vma.finish();
      await expectUsageError(() => vma.finish(), /finish after finish/);
      expect(() => vma.addDevice("drive-scsi0", 512)).toThrow(/after finish/);
    });

    it("applies the header limits as configs and devices are added", () => {
      const vma = writer();
      for (let index = 0; index < 7; index++) vma.addConfig(`c${index}`, new Uint8Array(65535));
      expectLimitError(() => vma.addConfig("c7", new Uint8Array(65535)), "configs", /header would be/);
      expectLimitError(() => vma.addConfig("c7", new Uint8Array(65536)), "configs[7].data", /65535/);
      const many = writer();
      for (let index = 0; index < 254; index++) many.addDevice(`drive-${index}`, 512);
      expectLimitError(() => many.addDevice("drive-254", 512), "devices", /255 devices/);
    });
  });

  describe("pipelining", () => {
    /** A sink whose writes complete only when the test releases them. */
    class ManualSink implements VmaSink {
      readonly started: Uint8Array[][] = [];
      private readonly releases: Array<(error?: Error) => void> = [];

      write(chunks: readonly Uint8Array[]): Promise<void> {
        this.started.push([...chunks]);
        return new Promise((resolve, reject) => this.releases.push((error) => (error ? reject(error) : resolve())));
      }

      release(index: number, error?: Error): void {
        this.releases[index]!(error);
      }
    }

    /**
     * Two full extents queued: the first is being written (held by the sink),
     * and the write that completes the second waits for it.
     */
    const secondExtentWaitingOnFirst = async () => {
      const sink = new ManualSink();
      const vma = writer(sink);
      vma.addDevice("drive-scsi0", 2 * 58 * CLUSTER_SIZE);
      const data = filled(0);
      // Stored blocks: extents that store none are gathered, not written one by one.
      for (let clusterNum = 0; clusterNum < 115; clusterNum++) await vma.writeCluster(1, clusterNum, data, 0xffff);
      const blocked = vma.writeCluster(1, 115, data, 0xffff);
      return { sink, vma, data, blocked };
    };

    const settled = async (promise: Promise<unknown>): Promise<boolean> => {
      let done = false;
      void promise.then(
        () => (done = true),
        () => (done = true),
      );
      await new Promise((resolve) => setTimeout(resolve, 10));
      return done;
    };

    it("keeps one extent in flight and waits only when the next one is ready", async () => {
      const sink = new ManualSink();
      const vma = writer(sink);
      vma.addDevice("drive-scsi0", 3 * 58 * CLUSTER_SIZE);
      const data = filled(1);
      for (let clusterNum = 0; clusterNum < 58; clusterNum++) await vma.writeCluster(1, clusterNum, data, 0xffff);
      expect(sink.started).toHaveLength(1);
      for (let clusterNum = 58; clusterNum < 115; clusterNum++) await vma.writeCluster(1, clusterNum, data, 0xffff);
      // The second extent is full while the first is still being written.
      const blocked = vma.writeCluster(1, 115, data, 0xffff);
      expect(await settled(blocked)).toBe(false);
      expect(sink.started).toHaveLength(1);
      sink.release(0);
      await blocked;
      expect(sink.started).toHaveLength(2);
      for (let clusterNum = 116; clusterNum < 174; clusterNum++) {
        const write = vma.writeCluster(1, clusterNum, data, 0xffff);
        if (clusterNum === 173) {
          expect(await settled(write)).toBe(false);
          sink.release(1);
        }
        await write;
      }
      vma.completeDevice(1);
      const finish = vma.finish();
      expect(await settled(finish)).toBe(false);
      sink.release(2);
      await finish;
      expect(sink.started).toHaveLength(3);
      // The same buffer for every cluster cannot be coalesced: header(s) plus 58 iovecs.
      expect(sink.started.map((call) => call.length)).toEqual([60, 59, 59]);
    });

    it("reports a sink error, with its code, to the next call and to finish", async () => {
      const sink = new ManualSink();
      const vma = writer(sink);
      vma.addDevice("drive-scsi0", 2 * 58 * CLUSTER_SIZE);
      const data = filled(0);
      for (let clusterNum = 0; clusterNum < 58; clusterNum++) await vma.writeCluster(1, clusterNum, data, 0);
      const noSpace = Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
      sink.release(0, noSpace);
      await new Promise((resolve) => setTimeout(resolve, 0));
      await expect(vma.writeCluster(1, 58, data, 0)).rejects.toBe(noSpace);
      await expect(vma.finish()).rejects.toMatchObject({ code: "ENOSPC" });
    });

    it("reports a failure of the extent it waited for", async () => {
      const { sink, blocked } = await secondExtentWaitingOnFirst();
      sink.release(0, Object.assign(new Error("EIO"), { code: "EIO" }));
      await expect(blocked).rejects.toMatchObject({ code: "EIO" });
      // The queued extent is never started once the archive is broken.
      expect(sink.started).toHaveLength(1);
    });

    it("abort waits for the write in flight and starts no other", async () => {
      const { sink, vma, data, blocked } = await secondExtentWaitingOnFirst();
      const aborted = vma.abort();
      expect(await settled(aborted)).toBe(false);
      sink.release(0);
      await aborted;
      await expect(blocked).rejects.toThrow(/aborted/);
      expect(sink.started).toHaveLength(1);
      await expectUsageError(() => vma.writeCluster(1, 116, data, 0), /aborted/);
      await vma.abort();
    });
  });

  describe("runs of zero clusters", () => {
    it("gathers the extents that store no block into a few writes, in order, read back complete", async () => {
      const sink = new MemorySink();
      const vma = writer(sink);
      const clusters = 3 * 2048 * 58 + 100;
      vma.addDevice("drive-scsi0", clusters * CLUSTER_SIZE);
      const zero = new Uint8Array(CLUSTER_SIZE);
      const data = filled(7);
      const dataCluster = 2048 * 58 + 5;
      for (let clusterNum = 0; clusterNum < clusters; clusterNum++) {
        if (clusterNum === dataCluster) await vma.writeCluster(1, clusterNum, data, 0xffff);
        else await vma.writeCluster(1, clusterNum, zero, 0);
      }
      vma.completeDevice(1);
      await vma.finish();
      await vma.whenReleased();
      // 6108 extents: without gathering, one write each.
      expect(sink.calls.length).toBeLessThanOrEqual(6);
      expect(vma.extentCount).toBe(Math.ceil(clusters / 58));

      let stored = 0;
      let extents = 0;
      let missing = -1;
      for await (const event of readVma(
        (async function* () {
          yield sink.bytes();
        })(),
      )) {
        if (event.type === "extent") {
          extents += 1;
          for (const slot of event.extent.slots) if (slot.mask !== 0) stored += 1;
        } else if (event.type === "end") {
          missing = event.summary.missing.length;
        } else if (event.type === "problem") {
          throw new Error(event.problem.message);
        }
      }
      expect(extents).toBe(Math.ceil(clusters / 58));
      expect(stored).toBe(1);
      expect(missing).toBe(0);
    });

    it("writes the same bytes for writeZeroClusters as for zero clusters one by one", async () => {
      const clusters = 2048 * 58 + 300;
      const one = new MemorySink();
      const bulk = new MemorySink();
      const [byOne, byBulk] = [writer(one), writer(bulk)];
      for (const vma of [byOne, byBulk]) vma.addDevice("drive-scsi0", clusters * CLUSTER_SIZE);
      const zero = new Uint8Array(CLUSTER_SIZE);
      const data = filled(3);
      for (let clusterNum = 0; clusterNum < clusters; clusterNum++) {
        await byOne.writeCluster(1, clusterNum, clusterNum === 70 ? data : zero, clusterNum === 70 ? 0x8001 : 0);
      }
      await byBulk.writeZeroClusters(1, 0, 70);
      await byBulk.writeCluster(1, 70, data, 0x8001);
      await byBulk.writeZeroClusters(1, 71, clusters - 71);
      for (const vma of [byOne, byBulk]) {
        vma.completeDevice(1);
        await vma.finish();
      }
      expect(Buffer.compare(bulk.bytes(), one.bytes())).toBe(0);
      await expectUsageError(() => byBulk.writeZeroClusters(1, 0, 1), /after finish/);
    });

    it("writes the same bytes for runs of zero clusters on two devices, each after a partial extent", async () => {
      const clusters = 5 * 58 + 7;
      const [one, bulk] = [new MemorySink(), new MemorySink()];
      const [byOne, byBulk] = [writer(one), writer(bulk)];
      for (const vma of [byOne, byBulk]) {
        vma.addDevice("drive-scsi0", clusters * CLUSTER_SIZE);
        vma.addDevice("drive-scsi1", clusters * CLUSTER_SIZE - 1000);
      }
      const zero = new Uint8Array(CLUSTER_SIZE);
      // Alternating devices, in runs that start mid-extent: the whole extents of a run are built at once.
      const runs = [3, 130, 61, 58, 40, clusters].flatMap((length, index) => [
        { devId: 1, length: Math.min(length, clusters - 5 * index) },
        { devId: 2, length: Math.min(length, clusters - 5 * index) },
      ]);
      const next = [0, 0, 0];
      for (const { devId, length } of runs) {
        const count = Math.min(length, clusters - next[devId]!);
        if (count <= 0) continue;
        for (let clusterNum = next[devId]!; clusterNum < next[devId]! + count; clusterNum++) {
          await byOne.writeCluster(devId, clusterNum, zero, 0);
        }
        await byBulk.writeZeroClusters(devId, next[devId]!, count);
        next[devId]! += count;
      }
      for (const vma of [byOne, byBulk]) {
        vma.completeDevice(1);
        vma.completeDevice(2);
        await vma.finish();
      }
      expect(next).toEqual([0, clusters, clusters]);
      expect(Buffer.compare(bulk.bytes(), one.bytes())).toBe(0);
    });

    it("refuses a run of zero clusters that overlaps written ones or passes the device end", async () => {
      const vma = writer();
      vma.addDevice("drive-scsi0", 400 * CLUSTER_SIZE);
      await vma.writeZeroClusters(1, 0, 58); // the first extent, with the archive header
      await vma.writeCluster(1, 250, filled(1), 0xffff);
      await expectUsageError(
        () => vma.writeZeroClusters(1, 58, 300),
        /cluster 250 of device "drive-scsi0" \(dev_id 1\) was already written/,
      );
      await expectUsageError(() => vma.writeZeroClusters(1, 251, 200), /cluster 400 is outside device "drive-scsi0"/);
    });

    it("encodes header-only extents of consecutive clusters as encodeExtentHeader does", () => {
      const uuid = new Uint8Array(16).map((_, index) => index * 7);
      const headers = encodeZeroExtentHeaders(uuid, 3, 4_000_000, 3, 58);
      const oneByOne = [0, 1, 2].map((extent) =>
        encodeExtentHeader(
          uuid,
          Array.from({ length: 58 }, (_, slot) => ({ devId: 3, clusterNum: 4_000_000 + extent * 58 + slot, mask: 0 })),
        ),
      );
      expect(Buffer.compare(headers, Buffer.concat(oneByOne))).toBe(0);
      expect(() => encodeZeroExtentHeaders(uuid, 1, 2 ** 32 - 57, 1, 58)).toThrow(/does not fit 32 bits/);
      expect(() => encodeZeroExtentHeaders(uuid, 1, 0, 1, 60)).toThrow(/1\.\.59 slots/);
      expect(() => encodeZeroExtentHeaders(uuid, 0, 0, 1, 58)).toThrow(/dev_id 0/);
    });

    it("releases zero clusters without waiting for their batch to be written", async () => {
      const sink = new MemorySink();
      const vma = writer(sink);
      vma.addDevice("drive-scsi0", 10 * 58 * CLUSTER_SIZE);
      const zero = new Uint8Array(CLUSTER_SIZE);
      // The first extent carries the archive header and is written; the next ones are gathered.
      for (let clusterNum = 0; clusterNum < 4 * 58; clusterNum++) await vma.writeCluster(1, clusterNum, zero, 0);
      const writesBefore = sink.calls.length;
      const released = await Promise.race([
        vma.whenReleased().then(() => "released"),
        new Promise((resolve) => setTimeout(() => resolve("waiting"), 1000)),
      ]);
      expect(released).toBe("released");
      expect(sink.calls.length).toBe(writesBefore);
      await vma.abort();
    });
  });
});
