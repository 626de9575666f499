// A running QEMU's drives as DiskSources: frozen together, read with our own
// NBD client, and a broken freeze (the copy-before-write job cancelled from
// outside) caught by the next read and by confirm() after the last read.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { QmpClient } from "../src/sources/qemu/index.js";
import { openQemuSources, type QemuSourcesOptions } from "../src/sources/qemu/qemu-sources.js";
import { SourceRefusal } from "../src/sources/source-refusal.js";
import {
  blockState,
  DISK_SIZE,
  guestWrite,
  makeDisks,
  type QemuProcess,
  startStorageDaemon,
} from "./helpers/qemu-guest.js";

const dir = mkdtempSync(join(tmpdir(), "vmab-qemu-sources-"));
const scratchDir = join(dir, "scratch");
const runDir = join(dir, "run");
let qsd: QemuProcess & { readonly guestFiles: readonly string[] };
let originals: Buffer[];

beforeAll(async () => {
  mkdirSync(scratchDir);
  mkdirSync(runDir, { mode: 0o700 });
  const disks = makeDisks(dir, 2);
  originals = disks.map((path) => readFileSync(path));
  qsd = await startStorageDaemon(dir, disks, { fuseGuests: true });
});

afterAll(async () => {
  await qsd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function options(tag: string, drives: readonly string[]): QemuSourcesOptions {
  return {
    qmpSocket: qsd.qmpSocket,
    drives: drives.map((drive, index) => ({
      drive,
      name: `disk${index}`,
      driveField: `devices[${index}].qemu.drive`,
      socketField: `devices[${index}].qemu.qmp_socket`,
    })),
    scratchDir,
    exportSocketPath: join(runDir, `${tag}.sock`),
    tag,
  };
}

async function readAll(source: {
  size: number;
  read: (b: Uint8Array, o: number, l: number, p: number) => Promise<void>;
}) {
  const data = Buffer.alloc(source.size);
  await source.read(data, 0, data.length, 0);
  return data;
}

describe("openQemuSources", () => {
  it("reads both drives as they were at the freeze through our NBD client, then leaves QEMU as it was", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const opened = await openQemuSources(options("src1", ["live0", "live1"]));
    try {
      const [first, second] = opened.sources;
      expect(first?.kind).toBe("qemu");
      expect(first?.location).toBe(`${qsd.qmpSocket}:live0`);
      for (const [index, guest] of qsd.guestFiles.entries()) {
        guestWrite(guest, 0, Buffer.alloc(64 * 1024, 0xa0 + index));
        guestWrite(guest, DISK_SIZE - 4096, Buffer.alloc(4096, 0xb0 + index));
      }
      expect((await readAll(first!)).equals(originals[0]!)).toBe(true);
      expect((await readAll(second!)).equals(originals[1]!)).toBe(true);
      expect(await first!.scratchBytes?.()).toBeGreaterThan(0);
      await first!.confirm?.();
      await second!.confirm?.();
    } finally {
      await Promise.all(opened.sources.map((source) => source.close()));
      await opened.release();
    }
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
    expect(readdirSync(scratchDir)).toEqual([]);
  });

  it("fails reads and confirm() once the freeze is broken, naming the drive", async () => {
    const opened = await openQemuSources(options("src2", ["live0"]));
    try {
      const [source] = opened.sources;
      await readAll(source!);
      const client = await QmpClient.connect(qsd.testQmpSocket);
      try {
        await client.execute("block-job-cancel", { device: "vmab-src2-fleece0", force: true });
      } finally {
        client.close();
      }
      await expect(source!.confirm?.()).rejects.toThrow(/live0/);
      await expect(readAll(source!)).rejects.toThrow(/point in time of live0 is lost/);
    } finally {
      await Promise.all(opened.sources.map((source) => source.close()));
      await opened.release();
    }
  });

  it("refuses an unknown drive as not-found on the drive's field, and an absent QEMU on the socket's", async () => {
    const unknown = await openQemuSources(options("src3", ["live0", "nosuch"])).catch((error: unknown) => error);
    expect(unknown).toBeInstanceOf(SourceRefusal);
    expect(unknown).toMatchObject({ code: "not-found", reason: "DRIVE_NOT_FOUND", field: "devices[1].qemu.drive" });

    const absent = { ...options("src4", ["live0"]), qmpSocket: join(dir, "no-qemu.sock") };
    const gone = await openQemuSources(absent).catch((error: unknown) => error);
    expect(gone).toMatchObject({
      code: "failed-precondition",
      reason: "QMP_UNREACHABLE",
      field: "devices[0].qemu.qmp_socket",
    });
  });
});
