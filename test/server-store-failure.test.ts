// The job store failing at the end of a job: the state dir is a 1 MiB
// tmpfs that the test fills, so SQLite's writes really fail (SQLITE_FULL).
// The server must keep telling the truth from memory (DONE everywhere, not
// ACTIVE forever), refuse what needs the store with RESOURCE_EXHAUSTED
// STATE_STORE_FULL, store the final state by itself once there is space
// again, and, on a clean shutdown, store it if it can. Other store failures
// (read-only, I/O errors) are UNAVAILABLE; bugs stay INTERNAL.
import { open, readdir, rm } from "node:fs/promises";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { DatabaseSync } from "node:sqlite";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { JOB_STORE_FILE } from "../src/engine/backup-engine.js";
import type { BackupEngine } from "../src/engine/backup-engine.js";
import { storeRefusal } from "../src/engine/store-refusal.js";
import { JobStore } from "../src/store/job-store.js";
import {
  backupSpec,
  blockPattern,
  KiB,
  makeEngine,
  makeSandbox,
  MiB,
  waitForEnd as waitForEngineEnd,
  waitForTransfer,
  waitUntil,
  writeSource,
} from "./engine-helpers.js";
import type { Sandbox } from "./engine-helpers.js";
import { canMount, isMountPoint, mountTmpfs, unmount } from "./helpers/mounts.js";
import { expectRefusal } from "./helpers/rpc-failure.js";
import { halfRandomImage, startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

const STATE_DIR_BYTES = 1 * MiB;

/** Fills the filesystem of `dir` with a file until ENOSPC; returns the file (remove it to free the space). */
async function fillUp(dir: string): Promise<string> {
  const file = path.join(dir, "filler");
  const handle = await open(file, "w");
  const chunk = Buffer.alloc(4 * KiB, 0x5a);
  try {
    for (;;) await handle.write(chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error;
  } finally {
    await handle.close();
  }
  return file;
}

/** The state of job `uuid` as its record in the store says (read through a connection of its own). */
function storedState(stateDir: string, uuid: string): string | undefined {
  const store = JobStore.open(path.join(stateDir, JOB_STORE_FILE));
  try {
    return store.get(uuid)?.state;
  } finally {
    store.close();
  }
}

const mountsAllowed = await canMount();

describe.skipIf(!mountsAllowed)("a full state dir at the end of a job (server)", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer({
      progressIntervalMs: 20,
      prepareStateDir: (stateDir) => mountTmpfs(stateDir, STATE_DIR_BYTES),
    });
  });

  afterAll(async () => {
    await server.server.shutdown("test finished");
    while (await isMountPoint(server.stateDir)) await unmount(server.stateDir);
    await server.stop();
  });

  async function readAll(uuid: string): Promise<BackupStatus[]> {
    const statuses: BackupStatus[] = [];
    for await (const message of server.client.watchBackup({ uuid })) statuses.push(message.status!);
    return statuses;
  }

  it("shows DONE everywhere, refuses with RESOURCE_EXHAUSTED, and stores DONE once there is space", async () => {
    const { client } = server;
    const source = await server.writeSource("disk.raw", halfRandomImage(4 * MiB));
    const started = (
      await client.backup({
        backupFile: "first.vma",
        devices: [{ name: "drive-scsi0", path: source }],
        speedLimit: BigInt(MiB),
      })
    ).status!;
    const watcher = readAll(started.uuid);
    await waitUntil(
      async () => Number((await client.queryBackup({ uuid: started.uuid })).status!.transferredBytes) > 0,
    );

    const filler = await fillUp(server.stateDir);
    // Unthrottled, the job ends at once; storing its end fails.
    await client.setBackupSpeed({ uuid: started.uuid, speedLimit: 0n });
    const watched = await watcher;
    expect(watched.at(-1)!.state).toBe(BackupState.DONE);
    expect(storedState(server.stateDir, started.uuid)).toBe("active");

    // The truth, from memory.
    const done = (await client.queryBackup({ uuid: started.uuid })).status!;
    expect(done).toMatchObject({ state: BackupState.DONE, revision: watched.at(-1)!.revision });
    expect((await client.queryBackup({ uuid: "" })).status!.state).toBe(BackupState.DONE);
    expect((await client.listBackups({})).statuses.map((status) => status.state)).toEqual([BackupState.DONE]);
    expect((await client.listBackups({ states: [BackupState.DONE] })).statuses.map((status) => status.uuid)).toEqual([
      started.uuid,
    ]);
    expect((await client.listBackups({ states: [BackupState.ACTIVE] })).statuses).toEqual([]);
    expect((await readAll(started.uuid)).map((status) => status.state)).toEqual([BackupState.DONE]);
    const resume = new AbortController();
    for await (const message of client.watchBackup(
      { uuid: "", afterRevision: started.revision },
      { signal: resume.signal },
    )) {
      expect(message.status).toMatchObject({ uuid: started.uuid, state: BackupState.DONE });
      resume.abort();
      break;
    }
    const speed = await expectRefusal(
      client.setBackupSpeed({ uuid: started.uuid, speedLimit: 1n }),
      grpc.status.FAILED_PRECONDITION,
      "JOB_NOT_ACTIVE",
    );
    expect(speed.details).toContain("has already ended (done)");

    // What needs the store is refused, clearly, and leaves nothing behind.
    const refused = await expectRefusal(
      client.backup({ backupFile: "second.vma", devices: [{ name: "drive-scsi0", path: source }] }),
      grpc.status.RESOURCE_EXHAUSTED,
      "STATE_STORE_FULL",
    );
    expect(refused.details).toMatch(/state dir/);
    expect(await readdir(server.backupDir)).toEqual(["first.vma"]);
    await expectRefusal(
      client.deleteBackup({ uuid: started.uuid }),
      grpc.status.RESOURCE_EXHAUSTED,
      "STATE_STORE_FULL",
    );

    // Space again: the server stores the end by itself, and everything works.
    await rm(filler);
    await waitUntil(() => storedState(server.stateDir, started.uuid) === "done", 15_000);
    const next = (await client.backup({ backupFile: "second.vma", devices: [{ name: "drive-scsi0", path: source }] }))
      .status!;
    expect((await readAll(next.uuid)).at(-1)!.state).toBe(BackupState.DONE);
    await client.deleteBackup({ uuid: started.uuid });
    expect((await client.listBackups({})).statuses.map((status) => status.uuid)).toEqual([next.uuid]);
  });
});

describe.skipIf(!mountsAllowed)("a full state dir at the end of a job (engine shutdown)", () => {
  let sandbox: Sandbox;
  let engine: BackupEngine | undefined;

  afterEach(async () => {
    // The engine lets go of the database before its filesystem can be unmounted.
    await engine?.shutdown();
    while (await isMountPoint(sandbox.state)) await unmount(sandbox.state);
    await sandbox.cleanup();
  });

  it("stores the end on a clean shutdown when there is space again", async () => {
    sandbox = await makeSandbox();
    await mountTmpfs(sandbox.state, STATE_DIR_BYTES);
    // No background retry during the test: only shutdown can store the end.
    const current = makeEngine(sandbox, { storeRetryDelayMs: { first: 60_000, max: 60_000 } }).engine;
    engine = current;
    const source = await writeSource(
      sandbox,
      "disk.raw",
      blockPattern(2 * MiB, () => false),
    );
    const started = await current.start(
      backupSpec({
        backupFile: "vm.vma",
        devices: [{ name: "d", source: { kind: "path", path: source } }],
        speedLimit: MiB,
      }),
    );
    await waitForTransfer(current, started.uuid);
    const filler = await fillUp(sandbox.state);
    current.setSpeedLimit(started.uuid, 0);
    const end = await waitForEngineEnd(current, started.uuid);
    expect(end.state).toBe("done");
    expect(current.query(started.uuid)).toEqual(end);

    await rm(filler);
    await current.shutdown();
    expect(storedState(sandbox.state, started.uuid)).toBe("done");
  });
});

describe("which store failures are refusals", () => {
  it("answers a store that cannot be written UNAVAILABLE, and leaves SQL errors to be bugs", async () => {
    const sandbox = await makeSandbox();
    try {
      const file = path.join(sandbox.state, JOB_STORE_FILE);
      JobStore.open(file).close();
      const readOnly = new DatabaseSync(file, { readOnly: true });
      const failure = (sql: string): unknown => {
        try {
          readOnly.exec(sql);
        } catch (error) {
          return error;
        }
        throw new Error(`${sql} did not fail`);
      };
      try {
        const refusal = storeRefusal(failure("DELETE FROM jobs"), "cannot record a new job");
        expect(refusal).toMatchObject({ kind: "unavailable", reason: "STATE_STORE_UNAVAILABLE" });
        expect(refusal?.message).toMatch(
          /^cannot record a new job: the job store cannot be used now \(SQLITE_READONLY\)/,
        );
        expect(storeRefusal(failure("SELECT nonsense FROM nowhere"), "x")).toBeUndefined();
        expect(storeRefusal(new TypeError("a bug"), "x")).toBeUndefined();
      } finally {
        readOnly.close();
      }
    } finally {
      await sandbox.cleanup();
    }
  });
});
