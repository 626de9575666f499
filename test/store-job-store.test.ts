import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidPageTokenError, JobStore, StoreVersionError, type StoredJob } from "../src/store/job-store.js";
import { SCHEMA_VERSION } from "../src/store/migrations.js";

let dir: string;
let dbPath: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "vmabackup-store-"));
  dbPath = join(dir, "jobs.sqlite");
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function job(n: number, state = "done", requestId?: string): StoredJob {
  return { uuid: `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`, state, requestId, startTime: 1000 + n, record: { n } };
}

describe("JobStore", () => {
  it("keeps jobs across reopening, in WAL mode", () => {
    const store = JobStore.open(dbPath);
    store.save(job(1, "active"));
    store.save({ ...job(1, "done"), record: { n: 1, finished: true } });
    store.close();

    const reopened = JobStore.open(dbPath);
    expect(reopened.get(job(1).uuid)).toEqual({ ...job(1, "done"), record: { n: 1, finished: true } });
    expect(reopened.latest()?.uuid).toBe(job(1).uuid);
    reopened.close();
    const raw = new Database(dbPath);
    expect(raw.pragma("journal_mode", { simple: true })).toBe("wal");
    expect(raw.pragma("user_version", { simple: true })).toBe(SCHEMA_VERSION);
    raw.close();
  });

  it("refuses a database from a newer schema and leaves it untouched", () => {
    const raw = new Database(dbPath);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    expect(() => JobStore.open(dbPath)).toThrow(StoreVersionError);
    const again = new Database(dbPath);
    expect(again.pragma("user_version", { simple: true })).toBe(SCHEMA_VERSION + 1);
    again.close();
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
    expect(store.list({ pageSize: 10, states: ["error", "active"] }).jobs.map((j) => j.state)).toEqual(["active", "error"]);
    expect(store.inState("active").map((j) => j.uuid)).toEqual([job(3).uuid]);
    expect(store.findByRequestId("req-a", 0)?.uuid).toBe(job(3).uuid);
    expect(store.findByRequestId("req-a", 2000)).toBeUndefined();
    expect(store.delete(job(2).uuid)).toBe(true);
    expect(store.delete(job(2).uuid)).toBe(false);
    expect(store.get(job(2).uuid)).toBeUndefined();
    store.close();
  });

  it("rejects a page token it did not make", () => {
    const store = JobStore.open(dbPath);
    expect(() => store.list({ pageSize: 5, pageToken: "bogus" })).toThrow(InvalidPageTokenError);
    store.close();
  });
});
