// Job history in the job store: it survives closing and reopening the
// engine, jobs a dead process left active are recovered (error
// "interrupted: server restarted", partial file removed), a database of a
// newer schema is refused, revisions keep increasing across restarts, and
// delete forgets a job (and, when asked, removes exactly its archive).
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { parse as parseUuid } from "uuid";
import { beforeEach, describe, expect, it } from "vitest";
import {
  type BackupEngine,
  INTERRUPTED_MESSAGE,
  JOB_STORE_FILE,
  StateDirLockedError,
  StoreVersionError,
} from "../src/engine/backup-engine.js";
import type { FileIdentity } from "../src/engine/job.js";
import { toStoredJob } from "../src/engine/job-record.js";
import type { JobStatus } from "../src/engine/types.js";
import { JobStore } from "../src/store/job-store.js";
import { SCHEMA_VERSION } from "../src/store/migrations.js";
import {
  backupSpec,
  blockPattern,
  expectEngineError,
  KiB,
  makeEngine,
  useSandboxWithEngines,
  MiB,
  openEngine,
  waitForEnd,
  waitForTransfer,
  writeSource,
} from "./engine-helpers.js";

const fixture = useSandboxWithEngines();

async function open(): Promise<BackupEngine> {
  const { engine } = await openEngine(fixture.sandbox);
  fixture.adopt(engine);
  return engine;
}

async function runBackup(engine: BackupEngine, backupFile: string, source: string, speedLimit = 0): Promise<JobStatus> {
  const status = await engine.start(
    backupSpec({ backupFile, devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit }),
  );
  return waitForEnd(engine, status.uuid);
}

/** The identity the engine records for the partial file it creates. */
async function fileIdentity(file: string): Promise<FileIdentity> {
  const stats = await fs.stat(file, { bigint: true });
  return { dev: String(stats.dev), ino: String(stats.ino), born: String(stats.birthtimeNs) };
}

/** An ACTIVE job record as a process that died mid-backup leaves it. */
function activeRecord(
  uuid: string,
  backupFile: string,
  partialPath: string,
  revision: number,
  partialFile?: FileIdentity,
): ReturnType<typeof toStoredJob> {
  const status: JobStatus = {
    uuid,
    state: "active",
    errorMessage: "",
    backupFile,
    format: "vma",
    totalBytes: 4 * MiB,
    transferredBytes: MiB,
    zeroBytes: 0,
    startTime: new Date(Date.now() - 60_000),
    speedLimit: 1000,
    devices: [
      {
        name: "drive-scsi0",
        devId: 1,
        size: 4 * MiB,
        transferredBytes: MiB,
        zeroBytes: 0,
        sourceKind: "path",
        source: "/src/d.raw",
        scratchBytes: 0,
      },
    ],
    rate: 0,
    revision,
    updateTime: new Date(Date.now() - 1000),
  };
  return toStoredJob(status, { partialPath, ...(partialFile === undefined ? {} : { partialFile }) });
}

describe("history across engine instances", () => {
  it("keeps every job, its final status and the latest one after close and reopen", async () => {
    const source = await writeSource(
      fixture.sandbox,
      "d.raw",
      blockPattern(256 * KiB, (block) => block % 2 === 0),
    );
    const first = await open();
    const done = await runBackup(first, "one.vma", source);
    const slow = await first.start(
      backupSpec({
        backupFile: "two.vma",
        devices: [{ name: "d", source: { kind: "path", path: source } }],
        speedLimit: 1,
      }),
    );
    const [cancelled] = await first.cancel(slow.uuid);
    await first.shutdown();

    const second = await open();
    expect(second.query(done.uuid)).toEqual(done);
    expect(second.query(slow.uuid)).toEqual(cancelled);
    expect(second.query()).toEqual(cancelled);
    expect(second.list({ pageSize: 0 }).statuses).toEqual([cancelled, done]);
    // Finished jobs read from the store show no rate and no ETA.
    expect(cancelled).toMatchObject({ state: "cancelled", rate: 0 });
    expect(cancelled?.etaMs).toBeUndefined();

    // New jobs continue the revision sequence above everything stored.
    const third = await runBackup(second, "three.vma", source);
    expect(third.revision).toBeGreaterThan(cancelled?.revision ?? Infinity);
    expect(second.query()).toEqual(third);
  });

  it("lets one engine at a time own a state dir, and frees it on shutdown", async () => {
    const first = await open();
    await expect(openEngine(fixture.sandbox)).rejects.toBeInstanceOf(StateDirLockedError);
    await expect(openEngine(fixture.sandbox)).rejects.toThrow(/another vmabackup server is using this state dir/);
    await first.shutdown();
    const second = await open();
    expect(second.query()).toBeUndefined();
  });

  it("creates a missing state dir on open and refuses a database of a newer schema untouched", async () => {
    const stateDir = path.join(fixture.sandbox.root, "new", "state");
    const { engine } = await openEngine(fixture.sandbox, { stateDir });
    fixture.adopt(engine);
    expect(engine.query()).toBeUndefined();
    await engine.shutdown();
    expect(await fs.readdir(stateDir)).toContain(JOB_STORE_FILE);

    const file = path.join(stateDir, JOB_STORE_FILE);
    const raw = new DatabaseSync(file);
    raw.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 5}`);
    raw.close();
    const before = await fs.readFile(file);
    const opening = openEngine(fixture.sandbox, { stateDir });
    await expect(opening).rejects.toBeInstanceOf(StoreVersionError);
    await expect(opening).rejects.toThrow(/newer than .*upgrade vmabackup/);
    expect(() => makeEngine(fixture.sandbox, { stateDir })).toThrow(StoreVersionError);
    expect((await fs.readFile(file)).equals(before)).toBe(true);
  });
});

describe("writing to the store", () => {
  it("stores state changes before announcing them and progress at most once a second", async () => {
    const engine = await open();
    const source = await writeSource(
      fixture.sandbox,
      "d.raw",
      blockPattern(3 * MiB, (block) => block % 2 === 0),
    );
    const reader = JobStore.open(path.join(fixture.sandbox.state, JOB_STORE_FILE));
    try {
      const status = await engine.start(
        backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit: 2 * MiB }),
      );
      expect(reader.get(status.uuid)).toMatchObject({ state: "active", revision: status.revision });

      const storedProgress = new Map<number, number>(); // revision -> transferred bytes
      const sampler = setInterval(() => {
        const stored = reader.get(status.uuid);
        const record = stored?.record as { status: { transferredBytes: number } } | undefined;
        if (stored?.state === "active" && record !== undefined) {
          storedProgress.set(stored.revision, record.status.transferredBytes);
        }
      }, 20);
      let terminal: JobStatus | undefined;
      for await (const update of engine.watch(status.uuid)) {
        if (update.state === "active") continue;
        // Announced: already stored, with the same revision.
        expect(reader.get(status.uuid)).toMatchObject({ state: "done", revision: update.revision });
        terminal = update;
      }
      clearInterval(sampler);
      expect(terminal?.state).toBe("done");
      // About 1.5 s of work: the start, then one progress write a second at most.
      const writes = [...storedProgress.values()];
      expect(writes.length).toBeGreaterThanOrEqual(2);
      expect(writes.length).toBeLessThanOrEqual(3);
      expect(writes.slice(1).every((bytes) => bytes > 0 && bytes < 3 * MiB)).toBe(true);
    } finally {
      reader.close();
    }
  });
});

describe("recovery of jobs a dead process left active", () => {
  it("ends them in error with their partial file removed, keeps the rest, and the backup can run again", async () => {
    const source = await writeSource(
      fixture.sandbox,
      "d.raw",
      blockPattern(512 * KiB, (block) => block % 3 === 0),
    );
    const earlier = await open();
    const done = await runBackup(earlier, "earlier.vma", source);
    await earlier.shutdown();

    // What kill -9 in the middle of a backup leaves: an ACTIVE record and a partial file.
    const backupDir = await fs.realpath(fixture.sandbox.out);
    const backupFile = path.join(backupDir, "vm-100.vma");
    const partialPath = `${backupFile}.partial`;
    const uuid = "0b0e9a5e-3c1f-4d2a-9b7e-5f6a7b8c9d0e";
    // An archive's start: magic, version, the job's uuid.
    const start = Buffer.concat([
      Buffer.from("VMA\0", "latin1"),
      Buffer.from([0, 0, 0, 1]),
      Buffer.from(parseUuid(uuid)),
    ]);
    await fs.writeFile(partialPath, Buffer.concat([start, Buffer.alloc(64 * KiB - start.length, 1)]));
    const store = JobStore.open(path.join(fixture.sandbox.state, JOB_STORE_FILE));
    store.save(activeRecord(uuid, backupFile, partialPath, done.revision + 1, await fileIdentity(partialPath)));
    store.close();

    const started = Date.now();
    const engine = await open();
    const recovered = engine.query(uuid);
    expect(recovered).toMatchObject({
      uuid,
      state: "error",
      errorMessage: INTERRUPTED_MESSAGE,
      transferredBytes: MiB,
      speedLimit: 1000,
      rate: 0,
    });
    expect(INTERRUPTED_MESSAGE).toBe("interrupted: server restarted");
    expect(recovered?.endTime?.getTime()).toBeGreaterThanOrEqual(started);
    expect(recovered?.updateTime.getTime()).toBe(recovered?.endTime?.getTime());
    expect(recovered?.revision).toBeGreaterThan(done.revision + 1);
    await expect(fs.stat(partialPath)).rejects.toMatchObject({ code: "ENOENT" });
    // Nothing else about the history changed.
    expect(engine.query(done.uuid)).toEqual(done);
    expect(engine.list({ pageSize: 10, states: ["active"] }).statuses).toEqual([]);
    // A watcher of the recovered job gets its terminal status and the stream ends.
    const seen: JobStatus[] = [];
    for await (const status of engine.watch(uuid)) seen.push(status);
    expect(seen).toEqual([recovered]);

    // The same backup to the same name now succeeds.
    const again = await runBackup(engine, "vm-100.vma", source);
    expect(again.state).toBe("done");
    await engine.shutdown();

    // Recovery happens once: the next start changes nothing.
    const later = await open();
    expect(later.query(uuid)).toEqual(recovered);
  });

  it("also recovers through the constructor, but never removes a file outside the backup dir", async () => {
    const outside = path.join(fixture.sandbox.root, "precious.vma.partial");
    await fs.writeFile(outside, "not ours");
    const missing = path.join(await fs.realpath(fixture.sandbox.out), "gone.vma.partial");
    const store = JobStore.open(path.join(fixture.sandbox.state, JOB_STORE_FILE));
    const outsideUuid = "11111111-1111-4111-8111-111111111111";
    const missingUuid = "22222222-2222-4222-8222-222222222222";
    store.save(
      activeRecord(
        outsideUuid,
        path.join(fixture.sandbox.root, "precious.vma"),
        outside,
        1,
        await fileIdentity(outside),
      ),
    );
    store.save(activeRecord(missingUuid, missing.slice(0, -".partial".length), missing, 2));
    store.close();

    const { engine, logs } = makeEngine(fixture.sandbox);
    fixture.adopt(engine);
    expect(engine.query(outsideUuid)).toMatchObject({ state: "error", errorMessage: INTERRUPTED_MESSAGE });
    expect(engine.query(missingUuid)).toMatchObject({ state: "error", errorMessage: INTERRUPTED_MESSAGE });
    expect(await fs.readFile(outside, "utf8")).toBe("not ours");
    expect(logs.lines.find((line) => line.msg === "could not remove the partial archive")).toMatchObject({
      uuid: outsideUuid,
      reason: expect.stringContaining("outside the backup directory"),
    });
    expect(logs.lines.filter((line) => line.msg === "backup interrupted by a server restart")).toHaveLength(2);
  });
});

describe("revisions", () => {
  it("never repeat across restarts, even after the job with the highest revision was deleted", async () => {
    const source = await writeSource(fixture.sandbox, "d.raw", Buffer.alloc(64 * KiB, 3));
    const first = await open();
    const done = await runBackup(first, "a.vma", source);
    await first.delete(done.uuid, { deleteArchive: true });
    await first.shutdown();

    const second = await open();
    const started = await second.start(
      backupSpec({ backupFile: "b.vma", devices: [{ name: "d", source: { kind: "path", path: source } }] }),
    );
    expect(started.revision).toBeGreaterThan(done.revision);
    await waitForEnd(second, started.uuid);
  });
});

describe("delete", () => {
  let engine: BackupEngine;
  let source: string;

  beforeEach(async () => {
    engine = await open();
    source = await writeSource(
      fixture.sandbox,
      "d.raw",
      blockPattern(4 * MiB, (block) => block % 2 === 0),
    );
  });

  it("refuses an active job, an unknown one and a malformed uuid", async () => {
    const active = await engine.start(
      backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit: 1 }),
    );
    await expectEngineError(
      () => engine.delete(active.uuid, { deleteArchive: true }),
      "failed-precondition",
      "JOB_ACTIVE",
      "uuid",
    );
    expect(await fs.readdir(fixture.sandbox.out)).toEqual(["test.vma.partial"]);
    expect(engine.query(active.uuid)?.state).toBe("active");
    await expectEngineError(
      () => engine.delete("33333333-3333-4333-8333-333333333333", { deleteArchive: false }),
      "not-found",
      "JOB_NOT_FOUND",
      "uuid",
    );
    await expectEngineError(
      () => engine.delete("nope", { deleteArchive: false }),
      "invalid-argument",
      "UUID_INVALID",
      "uuid",
    );
  });

  it("forgets a finished job, keeping its archive unless asked, and stays forgotten after a restart", async () => {
    const kept = await runBackup(engine, "kept.vma", source);
    const removed = await runBackup(engine, "removed.vma", source);
    await engine.delete(kept.uuid, { deleteArchive: false });
    await engine.delete(removed.uuid, { deleteArchive: true });
    expect(await fs.readdir(fixture.sandbox.out)).toEqual(["kept.vma"]);
    for (const uuid of [kept.uuid, removed.uuid]) {
      await expectEngineError(() => engine.query(uuid), "not-found", "JOB_NOT_FOUND");
      await expectEngineError(() => engine.watch(uuid), "not-found", "JOB_NOT_FOUND");
      await expectEngineError(() => engine.delete(uuid, { deleteArchive: false }), "not-found", "JOB_NOT_FOUND");
    }
    expect(engine.list({ pageSize: 0 }).statuses).toEqual([]);
    expect(engine.query()).toBeUndefined();
    await engine.shutdown();
    const reopened = await open();
    expect(reopened.list({ pageSize: 0 }).statuses).toEqual([]);
  });

  it("is fine with an archive that is already gone", async () => {
    const done = await runBackup(engine, "gone.vma", source);
    await fs.rm(done.backupFile);
    await engine.delete(done.uuid, { deleteArchive: true });
    await expectEngineError(() => engine.query(done.uuid), "not-found", "JOB_NOT_FOUND");
  });

  it("never removes a file the job did not write", async () => {
    // A failed job's archive name now holds another job's archive.
    const cancelledStart = await engine.start(
      backupSpec({
        backupFile: "same.vma",
        devices: [{ name: "d", source: { kind: "path", path: source } }],
        speedLimit: 1,
      }),
    );
    const [cancelled] = await engine.cancel(cancelledStart.uuid);
    const later = await runBackup(engine, "same.vma", source);
    await engine.delete(cancelled?.uuid ?? "", { deleteArchive: true });
    expect(await fs.readdir(fixture.sandbox.out)).toEqual(["same.vma"]);

    // The archive was replaced by another file under the same name: refused, nothing deleted.
    await fs.rm(later.backupFile);
    await fs.writeFile(later.backupFile, "someone else's file");
    const error = await expectEngineError(
      () => engine.delete(later.uuid, { deleteArchive: true }),
      "failed-precondition",
      "ARCHIVE_REPLACED",
      "delete_archive",
    );
    expect(error.message).toContain("replaced");
    expect(await fs.readFile(later.backupFile, "utf8")).toBe("someone else's file");
    expect(engine.query(later.uuid)).toEqual(later);
    // Without the archive the record can still go.
    await engine.delete(later.uuid, { deleteArchive: false });
    expect(await fs.readdir(fixture.sandbox.out)).toEqual(["same.vma"]);
  });

  it("refuses to remove a recorded archive outside the backup dir", async () => {
    // A record from a server that ran with another backup dir.
    const otherDir = path.join(fixture.sandbox.root, "other");
    await fs.mkdir(otherDir);
    const { engine: other } = await openEngine(fixture.sandbox, {
      backupDir: otherDir,
      stateDir: path.join(fixture.sandbox.root, "s2"),
    });
    fixture.adopt(other);
    const done = await runBackup(other, "x.vma", source);
    await other.shutdown();
    const { engine: moved } = await openEngine(fixture.sandbox, { stateDir: path.join(fixture.sandbox.root, "s2") });
    fixture.adopt(moved);
    await expectEngineError(
      () => moved.delete(done.uuid, { deleteArchive: true }),
      "permission-denied",
      "PATH_NOT_ALLOWED",
      "delete_archive",
    );
    expect(await fs.readdir(otherDir)).toEqual(["x.vma"]);
    expect(moved.query(done.uuid)).toEqual(done);
  });

  it("stores a speed change, refuses one for a finished job and survives a restart with it", async () => {
    const status = await engine.start(
      backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit: 1 }),
    );
    await waitForTransfer(engine, status.uuid);
    const changed = engine.setSpeedLimit(status.uuid, 2);
    expect(changed).toMatchObject({ speedLimit: 2 });
    expect(changed.revision).toBeGreaterThan(status.revision);
    // Stored at once: another reader of the database sees it.
    const store = JobStore.open(path.join(fixture.sandbox.state, JOB_STORE_FILE));
    expect(store.get(status.uuid)).toMatchObject({ state: "active", revision: changed.revision });
    store.close();
    const [end] = await engine.cancel(status.uuid);
    expect(end).toMatchObject({ state: "cancelled", speedLimit: 2 });
    await expectEngineError(
      () => engine.setSpeedLimit(status.uuid, 5),
      "failed-precondition",
      "JOB_NOT_ACTIVE",
      "uuid",
    );
  });
});
