// ListBackups pagination over 500 real jobs on a real server, while more
// jobs are being started: every page token continues where the last page
// ended, so no job is listed twice and none that existed is missed.
import { randomBytes } from "node:crypto";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

const JOBS = 500;
/** Jobs run in this many lanes at once, each with its own source (a device is locked while backed up). */
const LANES = 8;
/** Odd, so pages never line up with anything. */
const PAGE_SIZE = 37;

let server: TestServer;
let archiveCounter = 0;

beforeAll(async () => {
  server = await startTestServer({ progressIntervalMs: 50 });
});

afterAll(async () => {
  await server.stop();
});

/** Runs jobs of one small source back to back until `more()` says stop; returns their uuids in order. */
async function lane(source: string, more: () => boolean): Promise<string[]> {
  const uuids: string[] = [];
  while (more()) {
    archiveCounter += 1;
    const started = await server.client.backup({
      backupFile: `list-${archiveCounter}.vma`,
      devices: [{ name: "drive-scsi0", path: source }],
    });
    const uuid = started.status!.uuid;
    uuids.push(uuid);
    // The next job of this source may start once this one released it.
    for await (const _ of server.client.watchBackup({ uuid })) {
      // until the stream ends after the terminal status
    }
  }
  return uuids;
}

async function sources(prefix: string, count: number): Promise<string[]> {
  return Promise.all(
    Array.from({ length: count }, (_, index) => server.writeSource(`${prefix}-${index}.raw`, randomBytes(4096))),
  );
}

/** Pages through ListBackups; returns every status in the order listed and the number of pages. */
async function pageThrough(states: BackupState[] = []): Promise<{ statuses: BackupStatus[]; pages: number }> {
  const statuses: BackupStatus[] = [];
  let pageToken = "";
  let pages = 0;
  do {
    const page = await server.client.listBackups({ pageSize: PAGE_SIZE, pageToken, states });
    expect(page.statuses.length).toBeLessThanOrEqual(PAGE_SIZE);
    statuses.push(...page.statuses);
    pageToken = page.nextPageToken;
    pages += 1;
    // Give the jobs being started a chance to land between pages.
    await new Promise((resolve) => setTimeout(resolve, 5));
  } while (pageToken !== "");
  return { statuses, pages };
}

describe("ListBackups over 500 jobs", () => {
  it("lists every job once, newest first, while jobs are being added", async () => {
    let remaining = JOBS;
    const initialSources = await sources("initial", LANES);
    const initialLanes = await Promise.all(initialSources.map((source) => lane(source, () => remaining-- > 0)));
    const initial = initialLanes.flat();
    expect(initial).toHaveLength(JOBS);

    // Start more jobs all along the listing.
    let adding = true;
    const adders = (await sources("added", 2)).map((source) => lane(source, () => adding));
    await new Promise((resolve) => setTimeout(resolve, 50));
    let listed: { statuses: BackupStatus[]; pages: number };
    let done: { statuses: BackupStatus[]; pages: number };
    try {
      listed = await pageThrough();
      done = await pageThrough([BackupState.DONE]);
    } finally {
      adding = false;
    }
    const added = (await Promise.all(adders)).flat();
    expect(added.length).toBeGreaterThan(0);

    for (const { statuses, pages } of [listed, done]) {
      const uuids = statuses.map((status) => status.uuid);
      // No job twice...
      expect(new Set(uuids).size).toBe(uuids.length);
      // ...none of the 500 missing...
      const seen = new Set(uuids);
      expect(initial.filter((uuid) => !seen.has(uuid))).toEqual([]);
      // ...and nothing but jobs that exist.
      const known = new Set([...initial, ...added]);
      expect(uuids.filter((uuid) => !known.has(uuid))).toEqual([]);
      expect(pages).toBeGreaterThanOrEqual(Math.ceil(JOBS / PAGE_SIZE));
      // Newest first across pages.
      const starts = statuses.map((status) => timestampMs(status.startTime!));
      for (let i = 1; i < starts.length; i += 1) expect(starts[i]!).toBeLessThanOrEqual(starts[i - 1]!);
    }
    expect(done.statuses.every((status) => status.state === BackupState.DONE)).toBe(true);
    // Within a lane the order of starts is known: later jobs are listed earlier.
    const position = new Map(listed.statuses.map((status, index) => [status.uuid, index]));
    for (const uuids of initialLanes) {
      const positions = uuids.map((uuid) => position.get(uuid)!);
      expect([...positions].sort((a, b) => b - a)).toEqual(positions);
    }
  });
});
