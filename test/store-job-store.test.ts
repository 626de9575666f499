import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidPageTokenError, JobStore, StoreVersionError, type StoredJob } from "../src/store/job-store.js";
import { MIGRATIONS, SCHEMA_VERSION } from "../src/store/migrations.js";

let dir: string;
let dbPath: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "vmabackup-store-"));
  dbPath = join(dir, "jobs.sqlite");
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function job(n: number, state = "done", requestId?: string, revision = n): StoredJob {
  return {
    uuid: `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`,
    state,
    requestId,
    startTime: 1000 + n,
    revision,
    record: { n },
  };
}

describe("JobStore", () => {
  it("keeps jobs across reopening, in WAL mode", () => {
    const store = JobStore.open(dbPath);
    store.save(job(1, "active"));
    store.save({ ...job(1, "done", undefined, 7), record: { n: 1, finished: true } });
    store.close();

    const reopened = JobStore.open(dbPath);
    expect(reopened.get(job(1).uuid)).toEqual({ ...job(1, "done", undefined, 7), record: { n: 1, finished: true } });
    expect(reopened.latest()?.uuid).toBe(job(1).uuid);
    reopened.close();
    const raw = new DatabaseSync(dbPath);
    expect(pragma(raw, "journal_mode")).toBe("wal");
    expect(pragma(raw, "user_version")).toBe(SCHEMA_VERSION);
    raw.close();
  });

  it("refuses a database from a newer schema and leaves it untouched", () => {
    const raw = new DatabaseSync(dbPath);
    raw.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    expect(() => JobStore.open(dbPath)).toThrow(StoreVersionError);
    expect(() => JobStore.open(dbPath)).toThrow(/schema version 3, newer than 2.*upgrade vmabackup/);
    const again = new DatabaseSync(dbPath);
    expect(pragma(again, "user_version")).toBe(SCHEMA_VERSION + 1);
    // Not even the journal mode was switched.
    expect(pragma(again, "journal_mode")).toBe("delete");
    again.close();
  });

  it("migrates a version 1 database, giving its jobs their insertion order as revision", () => {
    const raw = new DatabaseSync(dbPath);
    raw.exec(MIGRATIONS[0] as string);
    raw.exec("PRAGMA user_version = 1");
    const insert = raw.prepare(
      `INSERT INTO jobs (uuid, state, request_id, start_time, record) VALUES (?, ?, NULL, ?, ?)`,
    );
    insert.run(job(1).uuid, "done", 1001, JSON.stringify({ n: 1 }));
    insert.run(job(2).uuid, "error", 1002, JSON.stringify({ n: 2 }));
    raw.close();

    const store = JobStore.open(dbPath);
    expect(store.get(job(1).uuid)?.revision).toBe(1);
    expect(store.get(job(2).uuid)).toMatchObject({ state: "error", revision: 2, record: { n: 2 } });
    expect(store.revisionHighWater()).toBe(2);
    expect(store.changedAfter(1).map((stored) => stored.uuid)).toEqual([job(2).uuid]);
    store.close();
    const check = new DatabaseSync(dbPath);
    expect(pragma(check, "user_version")).toBe(2);
    check.close();
  });

  it("pages newest first without duplicates or gaps while jobs are added", () => {
    const store = JobStore.open(dbPath);
    for (let n = 0; n < 50; n++) store.save(job(n));
    const seen: string[] = [];
    let token: string | undefined;
    let added = 1000;
    do {
      const page = store.list({ pageSize: 7, pageToken: token });
      seen.push(...page.jobs.map((j) => j.uuid));
      token = page.nextPageToken;
      store.save(job(added++)); // newer jobs must not shift the pages still to come
    } while (token);
    expect(seen).toEqual(Array.from({ length: 50 }, (_, i) => job(49 - i).uuid));
    store.close();
  });

  it("filters by state, finds request ids within a window and deletes", () => {
    const store = JobStore.open(dbPath);
    store.save(job(1, "done", "req-a"));
    store.save(job(2, "error"));
    store.save(job(3, "active", "req-a"));
    expect(store.list({ pageSize: 10, states: ["error", "active"] }).jobs.map((j) => j.state)).toEqual([
      "active",
      "error",
    ]);
    expect(store.inState("active").map((j) => j.uuid)).toEqual([job(3).uuid]);
    expect(store.findByRequestId("req-a", 0)?.uuid).toBe(job(3).uuid);
    expect(store.findByRequestId("req-a", 2000)).toBeUndefined();
    expect(store.findByRequestId("req-b", 0)).toBeUndefined();
    expect(store.delete(job(2).uuid)).toBe(true);
    expect(store.delete(job(2).uuid)).toBe(false);
    expect(store.get(job(2).uuid)).toBeUndefined();
    store.close();
  });

  it("lists the jobs changed after a revision, lowest revision first", () => {
    const store = JobStore.open(dbPath);
    store.save(job(1, "done", undefined, 10));
    store.save(job(2, "active", undefined, 11));
    store.save(job(3, "done", undefined, 12));
    store.save(job(2, "done", undefined, 13)); // job 2 changed again: it moves to the end
    expect(store.changedAfter(10).map((stored) => [stored.uuid, stored.revision])).toEqual([
      [job(3).uuid, 12],
      [job(2).uuid, 13],
    ]);
    expect(store.changedAfter(13)).toEqual([]);
    expect(store.changedAfter(0)).toHaveLength(3);
    store.close();
  });

  it("keeps the revision high-water mark across deletion and reopening, never lowering it", () => {
    const store = JobStore.open(dbPath);
    expect(store.revisionHighWater()).toBe(0);
    store.save(job(1, "done", undefined, 5));
    expect(store.revisionHighWater()).toBe(5);
    store.reserveRevisions(100);
    store.reserveRevisions(50); // never lowers
    expect(store.revisionHighWater()).toBe(100);
    store.save(job(2, "done", undefined, 150));
    expect(store.revisionHighWater()).toBe(150);
    store.reserveRevisions(200);
    store.save(job(3, "done", undefined, 201));
    store.delete(job(3).uuid);
    store.close();

    const reopened = JobStore.open(dbPath);
    // The job that held the highest stored revision is gone; the mark stays.
    expect(reopened.revisionHighWater()).toBe(200);
    reopened.close();
  });

  it("rejects a page token it did not make", () => {
    const store = JobStore.open(dbPath);
    for (const token of [
      "bogus",
      Buffer.from("v1:").toString("base64url"),
      Buffer.from("v2:5").toString("base64url"),
    ]) {
      expect(() => store.list({ pageSize: 5, pageToken: token })).toThrow(InvalidPageTokenError);
    }
    store.close();
  });
});

/** The value of a one-value pragma, e.g. `pragma(db, "user_version")`. */
function pragma(db: DatabaseSync, name: string): unknown {
  return Object.values(db.prepare(`PRAGMA ${name}`).get() ?? {})[0];
}
