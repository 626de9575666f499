// Whole backups through the API: a two-device job with awkward sizes and
// mixed zero / non-zero data ends DONE with exact counters, and its archive
// parses back to the same bytes; a throttled job moves at its speed limit.
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { BackupFormat, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { readVma } from "../src/vma/reader.js";
import { ExtentData } from "../src/vma/reader-extent-data.js";
import type { VmaHeader } from "../src/vma/reader-types.js";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4 * KiB;
const CLUSTER = 64 * KiB;

/** One piece of an image: `bytes` of zeros or of random data. */
type Piece = { zero: number } | { data: number };

function image(pieces: readonly Piece[]): Buffer {
  return Buffer.concat(pieces.map((piece) => ("zero" in piece ? Buffer.alloc(piece.zero) : nonZeroRandom(piece.data))));
}

/** Random bytes none of which is zero, so that a short data piece never reads as a zero block. */
function nonZeroRandom(size: number): Buffer {
  const bytes = randomBytes(size);
  for (let index = 0; index < size; index++) bytes[index]! |= 1;
  return bytes;
}

/** Device bytes in all-zero 4 KiB blocks (a straddling last block counts its device part). */
function zeroBytesOf(data: Buffer): number {
  const zeroBlock = Buffer.alloc(BLOCK);
  let zero = 0;
  for (let offset = 0; offset < data.length; offset += BLOCK) {
    const end = Math.min(offset + BLOCK, data.length);
    if (zeroBlock.compare(data, offset, end, 0, end - offset) === 0) zero += end - offset;
  }
  return zero;
}

interface RestoredArchive {
  readonly header: VmaHeader;
  /** Device contents by name, rebuilt from the extents. */
  readonly disks: Map<string, Buffer>;
  readonly problems: string[];
  readonly missingClusters: number;
}

/** Parses an archive with the project's strict reader and rebuilds every disk. */
async function restore(path: string): Promise<RestoredArchive> {
  let header: VmaHeader | undefined;
  const disks = new Map<string, Buffer>();
  const byDevId = new Map<number, Buffer>();
  const problems: string[] = [];
  let missingClusters = 0;
  for await (const event of readVma(createReadStream(path, { highWaterMark: 4 * MiB }))) {
    if (event.type === "header") {
      header = event.header;
      for (const device of header.devices.values()) {
        const disk = Buffer.alloc(device.size);
        disks.set(device.name, disk);
        byDevId.set(device.devId, disk);
      }
    } else if (event.type === "extent") {
      const data = new ExtentData(event.extent.data);
      for (const slot of event.extent.slots) {
        const disk = byDevId.get(slot.devId)!;
        let dataOffset = slot.dataOffset;
        for (let block = 0; block < 16; block++) {
          if ((slot.mask & (1 << block)) === 0) continue;
          const diskOffset = slot.cluster * CLUSTER + block * BLOCK;
          const length = Math.min(BLOCK, disk.length - diskOffset);
          Buffer.concat(data.views(dataOffset, BLOCK)).copy(disk, diskOffset, 0, length);
          dataOffset += BLOCK;
        }
      }
    } else if (event.type === "problem") {
      problems.push(event.problem.message);
    } else {
      missingClusters = event.summary.missing.reduce((sum, device) => sum + device.count, 0);
    }
  }
  return { header: header!, disks, problems, missingClusters };
}

async function waitForEnd(server: TestServer, uuid: string): Promise<BackupStatus[]> {
  const statuses: BackupStatus[] = [];
  for await (const message of server.client.watchBackup({ uuid })) statuses.push(message.status!);
  return statuses;
}

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({ progressIntervalMs: 20 });
});

afterAll(async () => {
  await server.stop();
});

describe("a two-device backup", () => {
  it("ends DONE with exact counters and an archive that reads back byte for byte", async () => {
    // 5 clusters + 3 blocks + 1536 bytes: the last block straddles the end and holds data.
    const diskA = image([
      { zero: CLUSTER },
      { data: CLUSTER },
      ...Array.from({ length: 8 }, (): Piece[] => [{ zero: BLOCK }, { data: BLOCK }]).flat(),
      { zero: CLUSTER - 1 },
      { data: 1 },
      { data: CLUSTER / 2 },
      { zero: CLUSTER / 2 },
      { zero: BLOCK },
      { data: BLOCK },
      { zero: BLOCK },
      { data: 1536 },
    ]);
    // 2 clusters + 2 blocks + 512 bytes: the straddling last block is zero.
    const diskB = image([{ data: CLUSTER }, { zero: CLUSTER }, { data: BLOCK }, { zero: BLOCK + 512 }]);
    expect(diskA.length % CLUSTER).not.toBe(0);
    expect(diskB.length % CLUSTER).not.toBe(0);
    const pathA = await server.writeSource("disk-a.raw", diskA);
    const pathB = await server.writeSource("disk-b.raw", diskB);
    const config = Buffer.from("memory: 2048\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n");

    const started = await server.client.backup({
      backupFile: "vm-101.vma",
      devices: [
        { name: "drive-scsi0", path: pathA },
        { name: "drive-virtio1", path: pathB },
      ],
      configs: [{ name: "qemu-server.conf", data: config }],
    });
    const uuid = started.status!.uuid;
    const statuses = await waitForEnd(server, uuid);
    const final = statuses.at(-1)!;

    const total = diskA.length + diskB.length;
    const zeroA = zeroBytesOf(diskA);
    const zeroB = zeroBytesOf(diskB);
    expect(zeroA).toBe(CLUSTER + 8 * BLOCK + 15 * BLOCK + CLUSTER / 2 + 2 * BLOCK);
    expect(zeroB).toBe(CLUSTER + BLOCK + 512);
    expect(final).toMatchObject({
      uuid,
      state: BackupState.DONE,
      errorMessage: "",
      format: BackupFormat.VMA,
      totalBytes: BigInt(total),
      transferredBytes: BigInt(total),
      zeroBytes: BigInt(zeroA + zeroB),
    });
    const devices = final.devices.map(({ name, devId, size, transferredBytes, zeroBytes }) => ({
      name,
      devId,
      size,
      transferredBytes,
      zeroBytes,
    }));
    expect(devices).toEqual([
      {
        name: "drive-scsi0",
        devId: 1,
        size: BigInt(diskA.length),
        transferredBytes: BigInt(diskA.length),
        zeroBytes: BigInt(zeroA),
      },
      {
        name: "drive-virtio1",
        devId: 2,
        size: BigInt(diskB.length),
        transferredBytes: BigInt(diskB.length),
        zeroBytes: BigInt(zeroB),
      },
    ]);
    expect(timestampDate(final.endTime!).getTime()).toBeGreaterThanOrEqual(timestampDate(final.startTime!).getTime());
    expect(await readdir(server.backupDir)).toEqual(["vm-101.vma"]);

    const archive = await restore(final.backupFile);
    expect(archive.problems).toEqual([]);
    expect(archive.missingClusters).toBe(0);
    expect(archive.header.uuid).toBe(uuid);
    expect(archive.header.configs.map((entry) => [entry.name, entry.data.equals(config)])).toEqual([
      ["qemu-server.conf", true],
    ]);
    expect([...archive.header.devices.values()].map((device) => [device.devId, device.name, device.size])).toEqual([
      [1, "drive-scsi0", diskA.length],
      [2, "drive-virtio1", diskB.length],
    ]);
    expect(archive.disks.get("drive-scsi0")!.equals(diskA)).toBe(true);
    expect(archive.disks.get("drive-virtio1")!.equals(diskB)).toBe(true);
  });
});

describe("the speed limit", () => {
  it("holds the transferred bytes a client sees to the limit within 15 % over 2 s", async () => {
    const limit = 2 * MiB;
    const source = await server.writeSource("throttled.raw", image([{ data: 4 * MiB }, { zero: 12 * MiB }]));
    const started = await server.client.backup({
      backupFile: "throttled.vma",
      devices: [{ name: "drive-scsi0", path: source }],
      speedLimit: BigInt(limit),
    });
    const uuid = started.status!.uuid;
    try {
      await new Promise((resolve) => setTimeout(resolve, 300));
      const sample = async (): Promise<[number, number]> => {
        const status = (await server.client.queryBackup({ uuid })).status!;
        expect(status.state).toBe(BackupState.ACTIVE);
        expect(status.speedLimit).toBe(BigInt(limit));
        return [performance.now(), Number(status.transferredBytes)];
      };
      const [t0, bytes0] = await sample();
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const [t1, bytes1] = await sample();
      const rate = ((bytes1 - bytes0) * 1000) / (t1 - t0);
      expect(rate).toBeGreaterThan(limit * 0.85);
      expect(rate).toBeLessThan(limit * 1.15);
    } finally {
      await server.client.cancelBackup({ uuid });
    }
  });
});
