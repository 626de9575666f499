// Startup recovery touches only files proven to be the job's own: the file it
// created (device and inode recorded when the partial file was made) holding
// an archive with the job's uuid. A server that shares its backup dir with
// another keeps its hands off the other's files of the same name; a job that
// died after publishing its archive but before storing DONE ends DONE.
import { randomBytes } from "node:crypto";
import { linkSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupEngine } from "../src/engine/backup-engine.js";
import { INTERRUPTED_MESSAGE, JOB_STORE_FILE } from "../src/engine/backup-engine.js";
import type { JobStatus } from "../src/engine/types.js";
import { createClient } from "../src/client/grpc-client.js";
import { startServer } from "../src/server/server.js";
import type { StoredJob } from "../src/store/job-store.js";
import { JobStore } from "../src/store/job-store.js";
import {
  backupSpec,
  blockPattern,
  KiB,
  useSandboxWithEngines,
  MiB,
  openEngine,
  ownStateDir,
  parseVma,
  waitForEnd,
  waitForTransfer,
  writeSource,
} from "./engine-helpers.js";
import type { CapturedLog } from "./helpers/log-capture.js";
import { canUseLoopDevices } from "./helpers/failing-disk.js";
import { canMount, mountLoopFilesystem } from "./helpers/mounts.js";

const fixture = useSandboxWithEngines();

async function open(stateDir = fixture.sandbox.state): Promise<{ engine: BackupEngine; logs: CapturedLog }> {
  const opened = await openEngine(fixture.sandbox, { stateDir });
  fixture.adopt(opened.engine);
  return opened;
}

function withStore<T>(stateDir: string, action: (store: JobStore) => T): T {
  const store = JobStore.open(path.join(stateDir, JOB_STORE_FILE));
  try {
    return action(store);
  } finally {
    store.close();
  }
}

/** Starts a slow backup of a fresh 2 MiB source into `backupFile` and waits until it wrote something. */
async function startSlowJob(engine: BackupEngine, backupFile: string, name: string): Promise<JobStatus> {
  const source = await writeSource(
    fixture.sandbox,
    `${name}.raw`,
    blockPattern(2 * MiB, (block) => block % 3 === 0),
  );
  const status = await engine.start(
    backupSpec({ backupFile, devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit: 512 * KiB }),
  );
  await waitForTransfer(engine, status.uuid, 256 * KiB);
  return status;
}

/**
 * Runs a job of `engine` the way kill -9 at `until` leaves it: returns the
 * job's ACTIVE record as stored while it ran. "running": the partial file
 * stays as it was (the same file, its inode kept alive by a hard link while
 * the job is cancelled). "published": the job ran to DONE, and the partial
 * name is linked again (kill -9 between the link and the unlink).
 */
async function crashJob(
  engine: BackupEngine,
  backupFile: string,
  until: "running" | "published",
): Promise<{ record: StoredJob; status: JobStatus }> {
  const status = await startSlowJob(engine, backupFile, `crash-${until}`);
  const record = withStore(fixture.sandbox.state, (store) => store.get(status.uuid))!;
  expect(record.state).toBe("active");
  const partialPath = `${status.backupFile}.partial`;
  if (until === "running") {
    const keep = `${partialPath}.keep`;
    linkSync(partialPath, keep);
    await engine.cancel(status.uuid);
    await engine.shutdown();
    await fs.rename(keep, partialPath);
  } else {
    engine.setSpeedLimit(status.uuid, 0);
    expect((await waitForEnd(engine, status.uuid)).state).toBe("done");
    await engine.shutdown();
    linkSync(status.backupFile, partialPath);
  }
  // The store as the dead process left it: the job still active.
  withStore(fixture.sandbox.state, (store) => store.save(record));
  return { record, status };
}

describe("recovery removes only its own partial file", () => {
  it("removes the partial file the dead job created", async () => {
    const { engine } = await open();
    const { status } = await crashJob(engine, "mine.vma", "running");
    expect(await fs.readdir(fixture.sandbox.out)).toEqual(["mine.vma.partial"]);
    const { engine: restarted, logs } = await open();
    expect(restarted.query(status.uuid)).toMatchObject({ state: "error", errorMessage: INTERRUPTED_MESSAGE });
    expect(await fs.readdir(fixture.sandbox.out)).toEqual([]);
    expect(logs.lines.find((line) => line.msg === "removed the partial archive")).toMatchObject({ uuid: status.uuid });
  });

  it("leaves another server's live partial file of the same name alone", async () => {
    // Server A dies mid-job; its partial file is gone (an operator removed it).
    const { engine: a } = await open();
    const { status: dead } = await crashJob(a, "shared.vma", "running");
    await fs.rm(`${dead.backupFile}.partial`);
    // Server C, with its own state dir and the same backup dir, now writes that name.
    const { engine: c } = await open(ownStateDir(fixture.sandbox));
    const live = await startSlowJob(c, "shared.vma", "live");
    const partialPath = `${live.backupFile}.partial`;
    const before = await fs.stat(partialPath);

    const { engine: restarted, logs } = await open();
    expect(restarted.query(dead.uuid)).toMatchObject({ state: "error", errorMessage: INTERRUPTED_MESSAGE });
    expect((await fs.stat(partialPath)).ino).toBe(before.ino);
    expect(logs.lines.find((line) => line.msg === "left a file that is not the job's own")).toMatchObject({
      uuid: dead.uuid,
      path: partialPath,
    });

    c.setSpeedLimit(live.uuid, 0);
    const end = await waitForEnd(c, live.uuid);
    expect(end.state, end.errorMessage).toBe("done");
    expect((await parseVma(end.backupFile)).uuid).toBe(live.uuid);
  });

  it("leaves a file of the same inode that holds another job's archive", async () => {
    // The dead job's partial file now starts an archive with another uuid.
    const { engine } = await open();
    const { status } = await crashJob(engine, "reused.vma", "running");
    const partialPath = `${status.backupFile}.partial`;
    const otherHeader = Buffer.concat([
      Buffer.from("VMA\0", "latin1"),
      Buffer.from([0, 0, 0, 1]),
      Buffer.alloc(16, 0x42),
    ]);
    const handle = await fs.open(partialPath, "r+");
    await handle.write(otherHeader, 0, otherHeader.length, 0);
    await handle.close();
    const { engine: restarted } = await open();
    expect(restarted.query(status.uuid)).toMatchObject({ state: "error", errorMessage: INTERRUPTED_MESSAGE });
    expect(await fs.readdir(fixture.sandbox.out)).toEqual(["reused.vma.partial"]);
  });
});

describe("a failed job's leftover partial file", () => {
  it("is removed later only while it is still the job's own", async (context) => {
    if (!(await canMount()) || !(await canUseLoopDevices())) context.skip(); // needs root and a loop device
    const backupFs = await mountLoopFilesystem(fixture.sandbox.root, fixture.sandbox.out, 48 * MiB);
    try {
      const { engine } = await open();
      const source = await writeSource(fixture.sandbox, "big.raw", randomBytes(16 * MiB));
      const status = await engine.start(
        backupSpec({
          backupFile: "ro.vma",
          devices: [{ name: "d", source: { kind: "path", path: source } }],
          speedLimit: 8 * MiB,
        }),
      );
      await waitForTransfer(engine, status.uuid, 256 * KiB);
      await backupFs.failReadOnly();
      expect((await waitForEnd(engine, status.uuid)).state).toBe("error");
      await backupFs.remount();
      // The read-only filesystem kept the partial file; now another server's file has its name.
      const partialPath = `${status.backupFile}.partial`;
      await fs.rm(partialPath);
      await fs.writeFile(partialPath, "another server's partial file");
      const small = await writeSource(
        fixture.sandbox,
        "small.raw",
        blockPattern(256 * KiB, () => false),
      );
      const next = await engine.start(
        backupSpec({ backupFile: "next.vma", devices: [{ name: "d", source: { kind: "path", path: small } }] }),
      );
      expect((await waitForEnd(engine, next.uuid)).state).toBe("done");
      expect(await fs.readFile(partialPath, "utf8")).toBe("another server's partial file");
      await engine.shutdown();
    } finally {
      await backupFs.dispose();
    }
  });
});

describe("recovery of a job that died after publishing its archive", () => {
  it("ends it DONE over gRPC, and DeleteBackup(delete_archive) removes the archive", async () => {
    const { engine } = await open();
    const { status } = await crashJob(engine, "published.vma", "published");
    expect((await fs.readdir(fixture.sandbox.out)).sort()).toEqual(["published.vma", "published.vma.partial"]);
    const archive = await fs.readFile(status.backupFile);

    const server = await startServer({
      listen: "127.0.0.1:0",
      backupDir: fixture.sandbox.out,
      sourceRoots: [fixture.sandbox.src],
      stateDir: fixture.sandbox.state,
      progressIntervalMs: 50,
      logger: (await import("pino")).pino({ level: "silent" }),
      shutdownGraceMs: 200,
    });
    const client = createClient(BackupService, server.address);
    try {
      const recovered = (await client.queryBackup({ uuid: status.uuid })).status!;
      expect(recovered.state, recovered.errorMessage).toBe(BackupState.DONE);
      expect(recovered.errorMessage).toBe("");
      expect(recovered.transferredBytes).toBe(BigInt(2 * MiB));
      // Every third 4 KiB block of the source is zero.
      expect(recovered.zeroBytes).toBe(BigInt(Math.ceil(512 / 3) * 4 * KiB));
      // The archive is untouched; the leftover partial name is gone.
      expect(await fs.readdir(fixture.sandbox.out)).toEqual(["published.vma"]);
      expect((await fs.readFile(status.backupFile)).equals(archive)).toBe(true);
      await client.deleteBackup({ uuid: status.uuid, deleteArchive: true });
      expect(await fs.readdir(fixture.sandbox.out)).toEqual([]);
    } finally {
      client.close();
      await server.shutdown("test finished");
    }
  });

  it("ends it in error, leaving the file, when the published archive is not complete", async () => {
    const { engine } = await open();
    const { status } = await crashJob(engine, "cut.vma", "published");
    const size = (await fs.stat(status.backupFile)).size;
    await fs.truncate(status.backupFile, size - 4 * KiB);
    const { engine: restarted, logs } = await open();
    expect(restarted.query(status.uuid)).toMatchObject({ state: "error", errorMessage: INTERRUPTED_MESSAGE });
    expect((await fs.stat(status.backupFile)).size).toBe(size - 4 * KiB);
    expect(logs.lines.find((line) => line.msg === "the published archive is not valid and complete")).toMatchObject({
      uuid: status.uuid,
    });
  });
});
