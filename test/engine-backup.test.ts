// Whole backups through the real VMA driver, checked by parsing the archive
// back: data, counters, dev_ids, configs, the commit at the very end, logs,
// and a failing target.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { archiveDeviceSize } from "../src/engine/archive-size.js";
import type { JobStatus } from "../src/engine/types.js";
import {
  backupSpec,
  blockPattern,
  CLUSTER,
  expectedZeroBytes,
  faultyDriver,
  KiB,
  makeEngine,
  MiB,
  ownStateDir,
  parseVma,
  useEngineSandbox,
  waitForEnd,
  waitUntil,
  writeSource,
} from "./engine-helpers.js";

const fixture = useEngineSandbox();

/** The source fields of a device status read from `path`. */
function fromPath(path: string): { sourceKind: "path"; source: string; scratchBytes: number } {
  return { sourceKind: "path", source: path, scratchBytes: 0 };
}

describe("a two-device backup", () => {
  it("stores both devices exactly, counts zero blocks exactly and commits only at the end", async () => {
    const { sandbox, engine } = fixture;
    // Spans several read chunks; ends 12345 bytes into a cluster, inside a
    // zero block (so only its in-device bytes count as zero).
    const sizeA = 9 * MiB + 12345;
    const lastBlockA = Math.floor((sizeA - 1) / 4096);
    const dataA = blockPattern(
      sizeA,
      (block) => block % 7 === 0 || block % 5 === 1 || (block >= 40 && block < 80) || block === lastBlockA,
    );
    // The example of docs/vma-format.md §5.4: 68.5 KiB, the straddling block 17
    // holds data in its 512 device bytes.
    const sizeB = 70144;
    const dataB = blockPattern(sizeB, (block) => block === 3 || block === 16);
    const pathA = await writeSource(sandbox, "a.raw", dataA);
    const pathB = await writeSource(sandbox, "b.raw", dataB);
    const config = Buffer.from("memory: 512\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n");

    const status = await engine.start(
      backupSpec({
        backupFile: "vm-100.vma",
        devices: [
          { name: "drive-scsi0", source: { kind: "path", path: pathA } },
          { name: "drive-virtio1", source: { kind: "path", path: pathB } },
        ],
        configs: [{ name: "qemu-server.conf", data: config }],
        speedLimit: 16 * MiB,
      }),
    );
    expect(status).toMatchObject({
      state: "active",
      format: "vma",
      totalBytes: sizeA + sizeB,
      speedLimit: 16 * MiB,
      errorMessage: "",
    });
    expect(status.backupFile).toBe(path.join(await fs.realpath(sandbox.out), "vm-100.vma"));
    expect(status.devices.map((device) => [device.name, device.devId, device.size])).toEqual([
      ["drive-scsi0", 1, sizeA],
      ["drive-virtio1", 2, sizeB],
    ]);
    // While the job runs only the partial file exists.
    expect(await fs.readdir(sandbox.out)).toEqual(["vm-100.vma.partial"]);

    const end = await waitForEnd(engine, status.uuid);
    expect(end.state).toBe("done");
    expect(end.endTime).toBeInstanceOf(Date);
    expect(await fs.readdir(sandbox.out)).toEqual(["vm-100.vma"]);

    const zeroA = expectedZeroBytes(dataA);
    const zeroB = expectedZeroBytes(dataB);
    expect(zeroA % 4096).not.toBe(0); // the last partial block is zero and counted in part
    expect(end).toMatchObject({ transferredBytes: sizeA + sizeB, zeroBytes: zeroA + zeroB });
    expect(end.devices).toEqual([
      { name: "drive-scsi0", devId: 1, size: sizeA, transferredBytes: sizeA, zeroBytes: zeroA, ...fromPath(pathA) },
      { name: "drive-virtio1", devId: 2, size: sizeB, transferredBytes: sizeB, zeroBytes: zeroB, ...fromPath(pathB) },
    ]);

    const archive = await parseVma(end.backupFile);
    expect(archive.uuid).toBe(status.uuid);
    expect([...archive.configs]).toEqual([["qemu-server.conf", config]]);
    // sizeA is not a multiple of 512: the archive holds it rounded up, padded with zeros.
    const paddedA = Buffer.concat([dataA, Buffer.alloc(archiveDeviceSize(sizeA) - sizeA)]);
    expect(archive.devices.map((device) => [device.devId, device.name, device.size])).toEqual([
      [1, "drive-scsi0", paddedA.length],
      [2, "drive-virtio1", sizeB],
    ]);
    expect(archive.devices[0]?.data.equals(paddedA)).toBe(true);
    expect(archive.devices[1]?.data.equals(dataB)).toBe(true);

    expect(engine.query()).toEqual(end);
    expect(engine.query(status.uuid)).toEqual(end);
  });

  it("stores an all-zero device as clusters without data", async () => {
    const { sandbox, engine } = fixture;
    const size = 3 * CLUSTER + 4096 + 100;
    const source = await writeSource(sandbox, "zero.raw", Buffer.alloc(size));
    const status = await engine.start(
      backupSpec({ devices: [{ name: "zero", source: { kind: "path", path: source } }] }),
    );
    const end = await waitForEnd(engine, status.uuid);
    expect(end).toMatchObject({ state: "done", transferredBytes: size, zeroBytes: size });
    const archive = await parseVma(end.backupFile);
    expect(archive.devices[0]?.data.equals(Buffer.alloc(archiveDeviceSize(size)))).toBe(true);
    // Header plus one extent header and no stored blocks.
    expect((await fs.stat(end.backupFile)).size).toBeLessThan(16 * KiB);
  });

  it("runs jobs that share nothing side by side", async () => {
    const { sandbox, engine } = fixture;
    const first = await writeSource(
      sandbox,
      "1.raw",
      blockPattern(2 * MiB, (block) => block % 2 === 0),
    );
    const second = await writeSource(
      sandbox,
      "2.raw",
      blockPattern(2 * MiB, (block) => block % 3 === 0),
    );
    const startBackup = (backupFile: string, source: string): Promise<JobStatus> =>
      engine.start(
        backupSpec({
          backupFile,
          devices: [{ name: "d", source: { kind: "path", path: source } }],
          speedLimit: 8 * MiB,
        }),
      );
    const jobs = [await startBackup("1.vma", first), await startBackup("2.vma", second)];
    // About a quarter of a second each: both run at once.
    expect(engine.query(jobs[0]?.uuid)?.state).toBe("active");
    const ends = await Promise.all(jobs.map((job) => waitForEnd(engine, job.uuid)));
    expect(ends.map((end) => end.state)).toEqual(["done", "done"]);
    // The later start is the latest job.
    expect(engine.query()?.uuid).toBe(jobs[1]?.uuid);
    for (const [index, end] of ends.entries()) {
      const archive = await parseVma(end.backupFile);
      expect(archive.devices[0]?.data.equals(await fs.readFile(index === 0 ? first : second))).toBe(true);
    }
  });

  it("logs the start and the end of a job", async () => {
    const { sandbox, engine, logs } = fixture;
    const source = await writeSource(
      sandbox,
      "d.raw",
      blockPattern(256 * KiB, (block) => block < 10),
    );
    const status = await engine.start(
      backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit: 0 }),
    );
    await waitForEnd(engine, status.uuid);
    const started = logs.lines.find((line) => line.msg === "backup started");
    const finished = logs.lines.find((line) => line.msg === "backup finished");
    expect(started).toMatchObject({
      level: 30,
      uuid: status.uuid,
      backupFile: status.backupFile,
      totalBytes: 256 * KiB,
      speedLimit: 0,
      devices: [{ name: "d", path: await fs.realpath(source), size: 256 * KiB }],
    });
    expect(finished).toMatchObject({
      level: 30,
      uuid: status.uuid,
      state: "done",
      transferredBytes: 256 * KiB,
      zeroBytes: 10 * 4096,
    });
    expect(typeof finished?.durationMs).toBe("number");
    expect(typeof finished?.bytesPerSecond).toBe("number");
  });
});

describe("a target that fails", () => {
  it("ends in error naming device and offset, removes the partial file and keeps serving", async () => {
    const { sandbox, engine } = fixture;
    const failing = makeEngine(sandbox, {
      stateDir: ownStateDir(sandbox),
      drivers: [
        faultyDriver({
          writeCluster: (devId, clusterNum) => {
            if (devId === 2 && clusterNum === 3) {
              throw Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
            }
          },
        }),
      ],
    });
    const a = await writeSource(
      sandbox,
      "a.raw",
      blockPattern(200 * KiB, () => false),
    );
    const b = await writeSource(
      sandbox,
      "b.raw",
      blockPattern(500 * KiB, () => false),
    );
    const spec = backupSpec({
      backupFile: "full.vma",
      devices: [
        { name: "drive-scsi0", source: { kind: "path", path: a } },
        { name: "drive-scsi1", source: { kind: "path", path: b } },
      ],
    });
    try {
      const status = await failing.engine.start(spec);
      const end = await waitForEnd(failing.engine, status.uuid);
      expect(end.state).toBe("error");
      expect(end.errorMessage).toBe(`device drive-scsi1: writing archive failed at offset ${3 * CLUSTER}: ENOSPC`);
      expect(await fs.readdir(sandbox.out)).toEqual([]);
      expect(failing.logs.lines.find((line) => line.msg === "backup finished")).toMatchObject({
        level: 40,
        state: "error",
        error: end.errorMessage,
      });
      // Locks are released: the same devices back up fine with a healthy driver.
      const retry = await engine.start(spec);
      expect((await waitForEnd(engine, retry.uuid)).state).toBe("done");
    } finally {
      await failing.engine.shutdown();
    }
  });

  it("reports a failure to create the archive and leaves nothing locked", async () => {
    const { sandbox, engine } = fixture;
    const source = await writeSource(sandbox, "d.raw", Buffer.alloc(64 * KiB, 1));
    // The partial name is a directory: the exclusive create fails.
    await fs.mkdir(path.join(sandbox.out, "x.vma.partial"));
    const spec = backupSpec({ backupFile: "x.vma", devices: [{ name: "d", source: { kind: "path", path: source } }] });
    await expect(engine.start(spec)).rejects.toMatchObject({ kind: "already-exists", reason: "BACKUP_FILE_EXISTS" });
    await fs.rmdir(path.join(sandbox.out, "x.vma.partial"));
    const status = await engine.start(spec);
    await waitUntil(() => engine.query(status.uuid)?.state !== "active");
    expect(engine.query(status.uuid)?.state).toBe("done");
  });
});
