// Faults while a job runs, each made real: a target filesystem that fills
// up (a 2 MiB tmpfs), a source that returns EIO (a loop device shrunk under
// an ext4 filesystem), a source that shrinks, a backup dir removed or made
// read-only (an ext4 filesystem failing read-only, as on a disk error),
// clients killed during Backup and WatchBackup. After each fault:
// the job ends ERROR with a message naming the device and the offset, no
// partial file is left, the server keeps serving, and the next backup
// succeeds. (Clients going away are not faults of the job: it ends DONE.)
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, truncate } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { parseVma } from "./engine-helpers.js";
import { canUseLoopDevices, makeFailingDisk } from "./helpers/failing-disk.js";
import type { FailingDisk } from "./helpers/failing-disk.js";
import { canMount, isMountPoint, mountLoopFilesystem, mountTmpfs, unmount } from "./helpers/mounts.js";
import type { LoopFilesystem } from "./helpers/mounts.js";
import { startRemoteClient } from "./helpers/remote-client.js";
import { KiB, MiB, rpcErrorOf, startSafetyServer, waitForEnd, waitForProgress } from "./helpers/safety-server.js";
import type { SafetyServer } from "./helpers/safety-server.js";

const DEVICE = "drive-scsi0";

let server: SafetyServer;
let workDir: string;
let mountsAllowed: boolean;
/** Mounts a test left behind (when it failed half-way), undone in afterAll. */
const mounted: string[] = [];
let failingDisk: FailingDisk | undefined;
/** Loop filesystems mounted on the backup dir, undone in afterAll when a test failed half-way. */
const loopFilesystems: LoopFilesystem[] = [];
/** Faults survived: the server served the next backup after each. */
const survived: string[] = [];
/** The error messages the faults produced, for the record. */
const messages: string[] = [];
let healthyBackups = 0;

beforeAll(async () => {
  server = await startSafetyServer({ progressIntervalMs: 20 });
  workDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-faults-"));
  mountsAllowed = await canMount();
});

afterAll(async () => {
  await failingDisk?.dispose();
  for (const filesystem of loopFilesystems.reverse()) await filesystem.dispose();
  for (const dir of mounted.reverse()) {
    while (await isMountPoint(dir)) await unmount(dir);
  }
  await server?.stop();
  await rm(workDir, { recursive: true, force: true });
  console.info(`faults survived: ${survived.length} (${survived.join(", ")})\n${messages.join("\n")}`);
});

/** Starts a job backing up `source` as DEVICE. */
async function startJob(backupFile: string, source: string, speedLimit = 0): Promise<string> {
  const response = await server.client.backup({
    backupFile,
    devices: [{ name: DEVICE, path: source }],
    speedLimit: BigInt(speedLimit),
  });
  return response.status!.uuid;
}

/** The offset an ERROR message names, after checking that it names DEVICE. */
function failedOffset(status: BackupStatus, what: RegExp): number {
  messages.push(status.errorMessage);
  expect(status.state, status.errorMessage).toBe(BackupState.ERROR);
  expect(status.errorMessage).toMatch(new RegExp(`^device ${DEVICE}: `));
  expect(status.errorMessage).toMatch(what);
  const match = / at offset (\d+)/.exec(status.errorMessage);
  expect(match, status.errorMessage).not.toBeNull();
  return Number(match![1]);
}

/** No partial file anywhere in the backup dir. */
async function expectNoPartialFile(dir = server.backupDir): Promise<void> {
  expect((await readdir(dir)).filter((name) => name.endsWith(".partial"))).toEqual([]);
}

/**
 * The server still answers, and a fresh backup of a healthy source ends DONE
 * with the right bytes; counts `fault` (when not empty) as survived.
 */
async function expectNextBackupSucceeds(fault: string): Promise<void> {
  expect(await server.client.queryBackup({})).toBeDefined();
  const data = randomBytes(192 * KiB);
  healthyBackups += 1;
  const source = await server.writeSource(`healthy-${healthyBackups}.raw`, data);
  const end = await waitForEnd(server.client, await startJob(`after-${healthyBackups}.vma`, source));
  expect(end.state, end.errorMessage).toBe(BackupState.DONE);
  const archive = await parseVma(end.backupFile);
  expect(archive.devices[0]!.data.equals(data)).toBe(true);
  if (fault !== "") survived.push(fault);
}

describe("the target fills up", () => {
  it("ENOSPC mid-archive on a 2 MiB tmpfs: ERROR naming device and offset, no partial file", async (context) => {
    if (!mountsAllowed) context.skip(); // needs root to mount a tmpfs
    await mountTmpfs(server.backupDir, 2 * MiB);
    mounted.push(server.backupDir);
    try {
      // Random data does not compress or skip: 16 MiB cannot fit in 2 MiB,
      // and the job notices long before the end of the source.
      const source = await server.writeSource("big.raw", randomBytes(16 * MiB));
      const end = await waitForEnd(server.client, await startJob("full.vma", source));
      const offset = failedOffset(end, /writing archive failed at offset \d+: ENOSPC$/);
      expect(offset).toBeGreaterThan(0);
      expect(offset).toBeLessThan(16 * MiB);
      expect(await readdir(server.backupDir)).toEqual([]);
      await expectNextBackupSucceeds("ENOSPC");
    } finally {
      await unmount(server.backupDir);
      mounted.pop();
    }
  });
});

describe("the source fails", () => {
  it("EIO from the middle of the source: ERROR naming device and offset, no partial file", async (context) => {
    if (!mountsAllowed || !(await canUseLoopDevices())) context.skip(); // needs root and a loop device
    const data = randomBytes(3 * MiB);
    failingDisk = await makeFailingDisk(workDir, path.join(server.sourceDir, "failing"), data, 0.6);
    await failingDisk.break();
    const end = await waitForEnd(server.client, await startJob("eio.vma", failingDisk.file));
    const offset = failedOffset(end, /read error at offset \d+: EIO$/);
    // Reads fail where the device ends, rounded down to the kernel's read-ahead.
    expect(offset).toBeLessThanOrEqual(failingDisk.badOffset);
    expect(offset).toBeGreaterThan(0);
    expect(offset % (4 * KiB)).toBe(0);
    expect(Number(end.transferredBytes)).toBeLessThanOrEqual(offset);
    await expectNoPartialFile();
    expect(await readdir(server.backupDir)).not.toContain("eio.vma");
    await expectNextBackupSucceeds("EIO");
    await failingDisk.dispose();
    failingDisk = undefined;
  });

  it("a source truncated mid-job: ERROR naming device and the offset of the early end", async () => {
    const source = await server.writeSource("shrinking.raw", randomBytes(8 * MiB));
    const uuid = await startJob("shrunk.vma", source, 4 * MiB);
    const progress = await waitForProgress(server.client, uuid, 512 * KiB);
    // Well ahead of the reader (which reads one chunk ahead), on a cluster boundary.
    const newSize = Math.floor((Number(progress.transferredBytes) + 2 * MiB) / (64 * KiB)) * 64 * KiB;
    await truncate(source, newSize);
    const end = await waitForEnd(server.client, uuid);
    const offset = failedOffset(end, /source shrank: expected 8388608 bytes, got EOF at offset \d+$/);
    expect(offset).toBe(newSize);
    expect(await readdir(server.backupDir)).not.toContain("shrunk.vma");
    await expectNoPartialFile();
    await expectNextBackupSucceeds("source truncated");
  });
});

describe("the backup dir goes away", () => {
  it("removed mid-job: ERROR naming device and offset; once it is back, backups work again", async () => {
    const source = await server.writeSource("to-removed.raw", randomBytes(8 * MiB));
    const uuid = await startJob("removed.vma", source, 4 * MiB);
    await waitForProgress(server.client, uuid, 256 * KiB);
    await rm(server.backupDir, { recursive: true });
    const end = await waitForEnd(server.client, uuid);
    failedOffset(end, /writing archive failed at offset \d+: ENOENT$/);
    // Without its directory the server refuses new jobs with a defined status
    // and keeps serving; the operator restores the directory.
    const refused = await rpcErrorOf(
      server.client.backup({ backupFile: "x.vma", devices: [{ name: DEVICE, path: source }] }),
    );
    expect(refused?.code).toBe(grpc.status.FAILED_PRECONDITION);
    await mkdir(server.backupDir);
    await expectNextBackupSucceeds("backup dir removed");
  });

  /**
   * Runs a job into an ext4 backup dir that fails read-only mid-archive (as
   * on a disk error); returns the job's terminal status. The filesystem is
   * writable again (remounted) when it returns.
   */
  async function jobOnFilesystemGoingReadOnly(name: string): Promise<BackupStatus> {
    const backupFs = await mountLoopFilesystem(workDir, server.backupDir, 48 * MiB);
    loopFilesystems.push(backupFs);
    const source = await server.writeSource(`${name}.raw`, randomBytes(16 * MiB));
    const uuid = await startJob(`${name}.vma`, source, 8 * MiB);
    await waitForProgress(server.client, uuid, 256 * KiB);
    await backupFs.failReadOnly();
    const end = await waitForEnd(server.client, uuid);
    // While the directory is read-only, new jobs are refused with a defined status.
    const refused = await rpcErrorOf(
      server.client.backup({ backupFile: "ro.vma", devices: [{ name: DEVICE, path: source }] }),
    );
    expect(refused?.code).toBe(grpc.status.FAILED_PRECONDITION);
    await backupFs.remount();
    return end;
  }

  it(
    "made read-only mid-job (the filesystem fails): ERROR naming device and offset, the server keeps " + "serving",
    async (context) => {
      if (!mountsAllowed || !(await canUseLoopDevices())) context.skip(); // needs root and a loop device
      const end = await jobOnFilesystemGoingReadOnly("readonly");
      const offset = failedOffset(end, /writing archive failed at offset \d+: EROFS$/);
      expect(offset).toBeLessThan(16 * MiB);
      expect(await readdir(server.backupDir)).not.toContain("readonly.vma");
      await expectNextBackupSucceeds("backup dir made read-only");
      await loopFilesystems.pop()!.dispose();
    },
  );

  // A read-only filesystem cannot lose a file, so the failed job's partial
  // file outlives the fault. Once the directory is writable again it must go.
  it("made read-only mid-job: no partial file outlives the fault once the dir is writable again", async (context) => {
    if (!mountsAllowed || !(await canUseLoopDevices())) context.skip();
    expect((await jobOnFilesystemGoingReadOnly("readonly-2")).state).toBe(BackupState.ERROR);
    await expectNextBackupSucceeds("");
    try {
      await expectNoPartialFile();
    } finally {
      await loopFilesystems.pop()!.dispose();
    }
  });
});

describe("clients that vanish", () => {
  it("a client killed during Backup: the job goes on to DONE", async () => {
    const data = randomBytes(2 * MiB);
    const source = await server.writeSource("orphan.raw", data);
    const remote = startRemoteClient({
      mode: "backup",
      address: server.address,
      request: { backupFile: "orphan.vma", devices: [{ name: DEVICE, path: source }], speedLimit: BigInt(4 * MiB) },
    });
    // Killed the moment the server has started the job, before the client can read the answer.
    const killed = new Promise<void>((resolve) => {
      const stop = server.log.onLine((line) => {
        if (line.msg === "backup started" && line.backupFile === path.join(server.backupDir, "orphan.vma")) {
          stop();
          remote.child.kill("SIGKILL");
          resolve();
        }
      });
    });
    await killed;
    await remote.kill();
    const started = server.log.lines.find(
      (line) => line.msg === "backup started" && String(line.backupFile).endsWith("orphan.vma"),
    );
    const end = await waitForEnd(server.client, String(started!.uuid));
    expect(end.state, end.errorMessage).toBe(BackupState.DONE);
    expect((await parseVma(end.backupFile)).devices[0]!.data.equals(data)).toBe(true);
    survived.push("client killed during Backup");
  });

  it("a client killed during WatchBackup: the job goes on to DONE and the server drops the stream", async () => {
    const data = randomBytes(8 * MiB);
    const source = await server.writeSource("watched.raw", data);
    // Slow until the watchers are gone (a client process takes a while to start), then unlimited.
    const uuid = await startJob("watched.vma", source, MiB);
    const watchersBefore = server.server.watchStreamCount;
    const remote = startRemoteClient({ mode: "watch", address: server.address, uuids: [uuid], perJob: 3 });
    await remote.waitFor((event) => event.event === "ready");
    expect(server.server.watchStreamCount).toBe(watchersBefore + 3);
    await remote.kill();
    // The server drops the dead client's streams while the job still runs.
    await expect.poll(() => server.server.watchStreamCount, { timeout: 1000, interval: 20 }).toBe(watchersBefore);
    expect((await server.client.queryBackup({ uuid })).status!.state).toBe(BackupState.ACTIVE);
    await server.client.setBackupSpeed({ uuid, speedLimit: 0n });
    const end = await waitForEnd(server.client, uuid);
    expect(end.state, end.errorMessage).toBe(BackupState.DONE);
    expect((await parseVma(end.backupFile)).devices[0]!.data.equals(data)).toBe(true);
    survived.push("client killed during WatchBackup");
  });
});
