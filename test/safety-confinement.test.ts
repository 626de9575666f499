// Where a request may read and write, tried through gRPC: escapes by
// symlink and `..`, names swapped to symlinks while the server is checking
// them (raced many times; whatever wins, no byte from outside the source
// root ends up in an archive and nothing is written outside the backup dir),
// sources that are not disks, and symlinks planted at the archive's names.
// The engine-level cases are in engine-confinement.test.ts.
import { execFileSync } from "node:child_process";
import { lstat, mkdir, readdir, rm, symlink, unlink, writeFile } from "node:fs/promises";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { parseVma } from "./engine-helpers.js";
import {
  KiB,
  MiB,
  rpcErrorOf,
  snapshotTree,
  startSafetyServer,
  waitForEnd,
  waitForProgress,
} from "./helpers/safety-server.js";
import type { SafetyServer } from "./helpers/safety-server.js";
import { startSwapLoop } from "./helpers/swap-loop.js";
import type { SwapLoop } from "./helpers/swap-loop.js";

/** Attempts per race; each is one Backup call (and its job when accepted). */
const RACE_ROUNDS = 150;

const INSIDE_BYTE = 0xa5;
const OUTSIDE_BYTE = 0x5e;
const INSIDE_SIZE = 64 * KiB;
const OUTSIDE_SIZE = 192 * KiB;

let server: SafetyServer;
let insideData: Buffer;
let outsideFile: string;
let swapper: SwapLoop | undefined;

beforeAll(async () => {
  server = await startSafetyServer();
  insideData = Buffer.alloc(INSIDE_SIZE, INSIDE_BYTE);
  // A secret next to the allowed directories, with a size and content no
  // inside source has, so any byte of it in an archive shows.
  outsideFile = path.join(server.outsideDir, "secret.raw");
  await writeFile(outsideFile, Buffer.alloc(OUTSIDE_SIZE, OUTSIDE_BYTE));
});

afterEach(async () => {
  await swapper?.stop();
  swapper = undefined;
});

afterAll(async () => {
  await server?.stop();
});

const device = (devicePath: string): { name: string; path: string }[] => [{ name: "drive-scsi0", path: devicePath }];

/** The status code of a Backup call, or "ok" with the job's uuid. */
async function tryBackup(backupFile: string, devicePath: string): Promise<{ code: grpc.status } | { uuid: string }> {
  const call = server.client.backup({ backupFile, devices: device(devicePath) });
  const error = await rpcErrorOf(call);
  if (error !== undefined) return { code: error.code };
  return { uuid: (await call).status!.uuid };
}

async function expectRefused(
  backupFile: string,
  devicePath: string,
  code: grpc.status,
  field: string,
): Promise<string> {
  const error = await rpcErrorOf(server.client.backup({ backupFile, devices: device(devicePath) }));
  expect(error, `${backupFile} from ${devicePath} was accepted`).toBeDefined();
  expect({ code: grpc.status[error!.code], field: error!.details.split(":")[0] }).toEqual({
    code: grpc.status[code],
    field,
  });
  return error!.details;
}

describe("escapes", () => {
  it("refuses a symlink out of the source root, and `..`, absolute or relative", async () => {
    const link = path.join(server.sourceDir, "escape.raw");
    await symlink(outsideFile, link);
    const up = path.join(server.sourceDir, "up");
    await symlink(server.rootDir, up);
    for (const devicePath of [
      link,
      path.join(up, "outside", "secret.raw"),
      `${server.sourceDir}/../outside/secret.raw`,
      "../outside/secret.raw",
      "./../../../../../../../..".concat(outsideFile),
    ]) {
      await expectRefused("escape.vma", devicePath, grpc.status.PERMISSION_DENIED, "devices[0].path");
    }
    expect(await readdir(server.backupDir)).toEqual([]);
  });

  it("refuses an archive through `..` or a symlinked directory, and writes nothing there", async () => {
    const before = await snapshotTree(server.outsideDir);
    await symlink(server.outsideDir, path.join(server.backupDir, "elsewhere"));
    const source = await server.writeSource("disk.raw", insideData);
    for (const backupFile of [
      "../outside/a.vma",
      path.join(server.outsideDir, "a.vma"),
      "elsewhere/a.vma",
      "elsewhere/../../outside/a.vma",
    ]) {
      await expectRefused(backupFile, source, grpc.status.PERMISSION_DENIED, "backup_file");
    }
    expect(await snapshotTree(server.outsideDir)).toEqual(before);
    await unlink(path.join(server.backupDir, "elsewhere"));
  });
});

describe("no existence oracle outside the roots", () => {
  it(
    "answers PERMISSION_DENIED for a path outside, whether it exists or not, through symlinked directories " + "too",
    async () => {
      // A directory symlink in the source root pointing outside: the names
      // below it must not tell whether a file exists out there.
      await symlink(server.outsideDir, path.join(server.sourceDir, "out-dir"));
      await symlink(path.join(server.outsideDir, "missing.raw"), path.join(server.sourceDir, "dangling.raw"));
      await mkdir(path.join(server.outsideDir, "sub"));
      await symlink(path.join(server.outsideDir, "sub"), path.join(server.sourceDir, "out-sub"));
      const unreadable = path.join(server.outsideDir, "locked");
      await mkdir(unreadable, { mode: 0o000 });
      const outside = [
        "out-dir/secret.raw", // exists
        "out-dir/missing.raw",
        "out-dir/missing-dir/disk.raw",
        "out-dir/secret.raw/below", // ENOTDIR out there
        "out-dir/locked/disk.raw",
        "out-sub/missing.raw",
        "dangling.raw",
        `${server.sourceDir}/../outside/missing.raw`,
      ];
      for (const devicePath of outside) {
        await expectRefused("oracle.vma", devicePath, grpc.status.PERMISSION_DENIED, "devices[0].path");
      }
      // Inside, a missing file is simply missing (`..` in a request is taken lexically).
      for (const devicePath of ["missing.raw", "no-dir/disk.raw", "out-sub/../secret.raw", "out-dir/../missing.raw"]) {
        await expectRefused("oracle.vma", devicePath, grpc.status.NOT_FOUND, "devices[0].path");
      }
      expect(await readdir(server.backupDir)).toEqual([]);
    },
  );

  it("answers PERMISSION_DENIED for an archive directory outside, whether it exists or not", async () => {
    await symlink(server.outsideDir, path.join(server.backupDir, "out-dir"));
    const source = await server.writeSource("oracle-disk.raw", insideData);
    for (const backupFile of ["out-dir/a.vma", "out-dir/missing/a.vma", "out-dir/secret.raw/a.vma"]) {
      await expectRefused(backupFile, source, grpc.status.PERMISSION_DENIED, "backup_file");
    }
    await expectRefused("missing/a.vma", source, grpc.status.FAILED_PRECONDITION, "backup_file");
    await unlink(path.join(server.backupDir, "out-dir"));
  });
});

describe("sources that are not disks", () => {
  it("refuses a FIFO at once, a directory, and /dev/zero (outside the roots)", async () => {
    const fifo = path.join(server.sourceDir, "fifo");
    execFileSync("mkfifo", [fifo]);
    const started = performance.now();
    expect(await expectRefused("fifo.vma", fifo, grpc.status.FAILED_PRECONDITION, "devices[0].path")).toContain("FIFO");
    expect(performance.now() - started).toBeLessThan(1000);
    await mkdir(path.join(server.sourceDir, "directory"));
    expect(
      await expectRefused(
        "dir.vma",
        path.join(server.sourceDir, "directory"),
        grpc.status.FAILED_PRECONDITION,
        "devices[0].path",
      ),
    ).toContain("directory");
    await expectRefused("zero.vma", "/dev/zero", grpc.status.PERMISSION_DENIED, "devices[0].path");
    expect(await readdir(server.backupDir)).toEqual([]);
  });

  it("refuses /dev/zero as a character device even when /dev is a source root", async () => {
    const withDev = await startSafetyServer({ extraSourceRoots: ["/dev"] });
    try {
      const error = await rpcErrorOf(withDev.client.backup({ backupFile: "zero.vma", devices: device("/dev/zero") }));
      expect(error?.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(error?.details).toContain("character device");
      expect(await readdir(withDev.backupDir)).toEqual([]);
    } finally {
      await withDev.stop();
    }
  });
});

describe("symlinks planted at the archive's names", () => {
  it("refuses a final or temporary name that is a symlink, without following it", async () => {
    const source = await server.writeSource("planted.raw", insideData);
    const victim = path.join(server.outsideDir, "victim");
    await symlink(victim, path.join(server.backupDir, "final.vma"));
    await symlink(victim, path.join(server.backupDir, "temp.vma.partial"));
    await expectRefused("final.vma", source, grpc.status.ALREADY_EXISTS, "backup_file");
    await expectRefused("temp.vma", source, grpc.status.ALREADY_EXISTS, "backup_file");
    await expect(lstat(victim)).rejects.toThrow(/ENOENT/);
    await rm(path.join(server.backupDir, "final.vma"));
    await rm(path.join(server.backupDir, "temp.vma.partial"));
  });

  it("never writes through a symlink planted at the final name while the job runs", async () => {
    const source = await server.writeSource("slow.raw", Buffer.alloc(2 * MiB, 0x11));
    const victim = path.join(server.outsideDir, "victim");
    const started = await server.client.backup({
      backupFile: "raced.vma",
      devices: device(source),
      speedLimit: BigInt(4 * MiB),
    });
    const uuid = started.status!.uuid;
    await waitForProgress(server.client, uuid, 1);
    await symlink(victim, path.join(server.backupDir, "raced.vma"));
    const end = await waitForEnd(server.client, uuid);
    expect(end.state).toBe(BackupState.ERROR);
    expect(end.errorMessage).toMatch(/^device drive-scsi0: writing archive failed at offset \d+: EEXIST/);
    await expect(lstat(victim)).rejects.toThrow(/ENOENT/);
    // Only the planted link is left: the partial file is gone.
    expect(await readdir(server.backupDir)).toEqual(["raced.vma"]);
    await rm(path.join(server.backupDir, "raced.vma"));
  });
});

describe("names swapped to symlinks while the server checks them", () => {
  /** Checks one raced outcome: refused with a defined code, or an archive of inside bytes only. */
  async function judge(outcome: { code: grpc.status } | { uuid: string }, tally: Map<string, number>): Promise<void> {
    if ("code" in outcome) {
      expect([grpc.status.PERMISSION_DENIED, grpc.status.NOT_FOUND, grpc.status.FAILED_PRECONDITION]).toContain(
        outcome.code,
      );
      tally.set(grpc.status[outcome.code]!, (tally.get(grpc.status[outcome.code]!) ?? 0) + 1);
      return;
    }
    const end = await waitForEnd(server.client, outcome.uuid);
    tally.set(BackupState[end.state], (tally.get(BackupState[end.state]) ?? 0) + 1);
    expect(end.state, end.errorMessage).toBe(BackupState.DONE);
    expect(Number(end.totalBytes)).toBe(INSIDE_SIZE);
    const archive = await parseVma(end.backupFile);
    expect(archive.devices.map((each) => each.size)).toEqual([INSIDE_SIZE]);
    expect(archive.devices[0]!.data.equals(insideData)).toBe(true);
    await unlink(end.backupFile);
  }

  it("a source file swapped with a symlink to outside: every archive holds inside bytes only", async () => {
    const inside = await server.writeSource("inside.raw", insideData);
    const raced = path.join(server.sourceDir, "raced.raw");
    swapper = await startSwapLoop("file", raced, inside, outsideFile);
    const tally = new Map<string, number>();
    for (let round = 0; round < RACE_ROUNDS; round++) await judge(await tryBackup(`file-${round}.vma`, raced), tally);
    await swapper.stop();
    // Both sides of the race won sometimes, or the test proved nothing.
    expect(tally.get("DONE"), JSON.stringify([...tally])).toBeGreaterThan(0);
    expect(tally.get("PERMISSION_DENIED"), JSON.stringify([...tally])).toBeGreaterThan(0);
    expect(await readdir(server.backupDir)).toEqual([]);
  });

  it("a source directory swapped with a symlink to outside: every archive holds inside bytes only", async () => {
    const insideDir = path.join(server.sourceDir, "vm-disks.parked-dir");
    await mkdir(insideDir);
    await writeFile(path.join(insideDir, "secret.raw"), insideData);
    const raced = path.join(server.sourceDir, "vm-disks");
    swapper = await startSwapLoop("dir", raced, insideDir, server.outsideDir);
    const tally = new Map<string, number>();
    for (let round = 0; round < RACE_ROUNDS; round++) {
      await judge(await tryBackup(`dir-${round}.vma`, path.join(raced, "secret.raw")), tally);
    }
    await swapper.stop();
    expect(tally.get("DONE"), JSON.stringify([...tally])).toBeGreaterThan(0);
    expect(tally.get("PERMISSION_DENIED"), JSON.stringify([...tally])).toBeGreaterThan(0);
    expect(await readdir(server.backupDir)).toEqual([]);
  });

  it("an archive directory swapped with a symlink to outside: nothing is ever written outside", async () => {
    const source = await server.writeSource("archive-race.raw", insideData);
    const target = path.join(server.outsideDir, "target");
    await mkdir(target);
    const insideDir = path.join(server.backupDir, "sub.parked-dir");
    await mkdir(insideDir);
    const raced = path.join(server.backupDir, "sub");
    swapper = await startSwapLoop("dir", raced, insideDir, target);
    const tally = new Map<string, number>();
    const written = new Set<string>();
    for (let round = 0; round < RACE_ROUNDS; round++) {
      const outcome = await tryBackup(`sub/a-${round}.vma`, source);
      if ("code" in outcome) {
        expect([grpc.status.PERMISSION_DENIED, grpc.status.FAILED_PRECONDITION]).toContain(outcome.code);
        tally.set(grpc.status[outcome.code]!, (tally.get(grpc.status[outcome.code]!) ?? 0) + 1);
      } else {
        // The job may fail when its directory vanishes under it; it must say where.
        const end = await waitForEnd(server.client, outcome.uuid);
        tally.set(BackupState[end.state], (tally.get(BackupState[end.state]) ?? 0) + 1);
        if (end.state === BackupState.ERROR)
          expect(end.errorMessage).toMatch(/^device drive-scsi0: .* at offset \d+: /);
      }
      for (const name of await readdir(target)) written.add(name);
    }
    await swapper.stop();
    // Refusals and started jobs both happened, or the race was never run.
    expect(tally.get("PERMISSION_DENIED") ?? 0, JSON.stringify([...tally])).toBeGreaterThan(0);
    expect((tally.get("DONE") ?? 0) + (tally.get("ERROR") ?? 0), JSON.stringify([...tally])).toBeGreaterThan(0);
    console.info(`archive directory race: ${JSON.stringify([...tally])}`);
    expect([...written], `written outside the backup dir (${JSON.stringify([...tally])})`).toEqual([]);
  });
});
