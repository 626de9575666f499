// WatchBackup over a real server on 127.0.0.1, for watchers that are not
// ideal: one that disconnects and resumes with after_revision (it misses no
// state change and gets nothing twice), and ones that never read while a
// job runs to its end (the server's buffers stay bounded, the job is not
// slowed, and the watchers still get the terminal status).
import { open } from "node:fs/promises";
import * as path from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus, WatchBackupResponse } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { readErrorDetails } from "../src/client/rpc-error-details.js";
import { expectRefusal } from "./helpers/rpc-failure.js";
import { startTestServer } from "./helpers/test-server.js";
import type { BackupClient, TestServer } from "./helpers/test-server.js";

const MiB = 1024 * 1024;
const TERMINAL = new Set([BackupState.DONE, BackupState.ERROR, BackupState.CANCELLED]);

let fileCounter = 0;

/** A sparse image of `size` bytes: cheap to read, so only the speed limit sets the pace. */
async function sparseImage(server: TestServer, size: number): Promise<string> {
  fileCounter += 1;
  const image = path.join(server.sourceDir, `sparse-${fileCounter}.raw`);
  const handle = await open(image, "w");
  await handle.truncate(size);
  await handle.close();
  return image;
}

async function startJob(server: TestServer, size: number, speedLimit: number): Promise<BackupStatus> {
  fileCounter += 1;
  const response = await server.client.backup({
    backupFile: `watch-${fileCounter}.vma`,
    devices: [{ name: "drive-scsi0", path: await sparseImage(server, size) }],
    speedLimit: BigInt(speedLimit),
  });
  return response.status!;
}

/** Reads `count` messages of a stream, then leaves it (the client cancels the call). */
async function readThenLeave(stream: AsyncIterable<WatchBackupResponse>, count: number): Promise<BackupStatus[]> {
  const seen: BackupStatus[] = [];
  for await (const message of stream) {
    seen.push(message.status!);
    if (seen.length === count) break;
  }
  return seen;
}

async function readAll(stream: AsyncIterable<WatchBackupResponse>): Promise<BackupStatus[]> {
  const seen: BackupStatus[] = [];
  for await (const message of stream) seen.push(message.status!);
  return seen;
}

/** Revisions must only grow: nothing twice, nothing out of order. */
function expectIncreasingRevisions(statuses: readonly BackupStatus[]): void {
  for (let i = 1; i < statuses.length; i += 1) {
    expect(statuses[i]!.revision).toBeGreaterThan(statuses[i - 1]!.revision);
  }
}

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe("a watcher that resumes with after_revision", () => {
  let server: TestServer;
  let client: BackupClient;

  beforeAll(async () => {
    server = await startTestServer({ progressIntervalMs: 50 });
    client = server.client;
  });

  afterAll(async () => {
    await server.stop();
  });

  it("gets what changed after its revision, misses no state change and gets nothing twice", async () => {
    const job = await startJob(server, 3 * MiB, 2 * MiB);
    const complete = readAll(client.watchBackup({ uuid: job.uuid }));
    const before = await readThenLeave(client.watchBackup({ uuid: job.uuid }), 3);
    const resumeAfter = before.at(-1)!.revision;
    // Changes happen while the watcher is away.
    await pause(300);
    const after = await readAll(client.watchBackup({ uuid: job.uuid, afterRevision: resumeAfter }));

    expect(after.length).toBeGreaterThan(0);
    expect(after.every((status) => status.revision > resumeAfter)).toBe(true);
    const joined = [...before, ...after];
    expectIncreasingRevisions(joined);
    expect(joined[0]!.state).toBe(BackupState.ACTIVE);
    expect(joined.filter((status) => TERMINAL.has(status.state)).map((status) => status.state)).toEqual([
      BackupState.DONE,
    ]);
    expect(joined.at(-1)!.state).toBe(BackupState.DONE);
    // The watcher that stayed saw the same end.
    const stayed = await complete;
    expectIncreasingRevisions(stayed);
    expect(stayed.at(-1)).toEqual(joined.at(-1));
  });

  it("gets the terminal status at once when the job ended while it was away, then nothing more", async () => {
    const job = await startJob(server, 64 * MiB, MiB);
    const [first] = await readThenLeave(client.watchBackup({ uuid: job.uuid }), 1);
    await client.cancelBackup({ uuid: job.uuid });
    const resumed = await readAll(client.watchBackup({ uuid: job.uuid, afterRevision: first!.revision }));
    expect(resumed.map((status) => status.state)).toEqual([BackupState.CANCELLED]);
    expect(resumed[0]!.revision).toBeGreaterThan(first!.revision);
    // Already up to date with a finished job: the stream ends without a message.
    const again = await readAll(client.watchBackup({ uuid: job.uuid, afterRevision: resumed[0]!.revision }));
    expect(again).toEqual([]);
  });

  it("over every job, gets each job that changed while it was away, oldest change first", async () => {
    const controller = new AbortController();
    const away = readThenLeave(client.watchBackup({ uuid: "" }, { signal: controller.signal }), 1);
    const a = await startJob(server, 64 * MiB, MiB);
    const [seenA] = await away;
    expect(seenA).toMatchObject({ uuid: a.uuid, state: BackupState.ACTIVE });

    // While away: A is cancelled, B runs to its end, C starts.
    await client.cancelBackup({ uuid: a.uuid });
    const b = await startJob(server, MiB, 0);
    await readAll(client.watchBackup({ uuid: b.uuid }));
    const c = await startJob(server, 64 * MiB, MiB);

    const resumed: BackupStatus[] = [];
    const resume = new AbortController();
    const wanted = (): boolean =>
      [a.uuid, b.uuid, c.uuid].every((uuid) => resumed.some((status) => status.uuid === uuid));
    try {
      for await (const message of client.watchBackup(
        { uuid: "", afterRevision: seenA!.revision },
        { signal: resume.signal },
      )) {
        resumed.push(message.status!);
        if (wanted()) break;
      }
    } finally {
      resume.abort();
      await client.cancelBackup({ uuid: c.uuid });
    }
    expect(resumed.every((status) => status.revision > seenA!.revision)).toBe(true);
    const latest = (uuid: string): BackupStatus => resumed.filter((status) => status.uuid === uuid).at(-1)!;
    expect(latest(a.uuid).state).toBe(BackupState.CANCELLED);
    expect(latest(b.uuid).state).toBe(BackupState.DONE);
    expect(latest(c.uuid).state).toBe(BackupState.ACTIVE);
    for (const uuid of [a.uuid, b.uuid, c.uuid]) {
      expectIncreasingRevisions(resumed.filter((status) => status.uuid === uuid));
    }
    // The catch-up comes in the order things happened.
    const order = [a.uuid, b.uuid, c.uuid].map((uuid) => resumed.findIndex((status) => status.uuid === uuid));
    expect([...order].sort((x, y) => x - y)).toEqual(order);
  });

  it(
    "is refused OUT_OF_RANGE, with the latest revision, when it asks for one the server never handed " + "out",
    async () => {
      const job = await startJob(server, MiB, 0);
      const [end] = (await readAll(client.watchBackup({ uuid: job.uuid }))).slice(-1);
      const ahead = end!.revision + 1_000_000n;
      for (const uuid of [job.uuid, ""]) {
        const error = await expectRefusal(
          readAll(client.watchBackup({ uuid, afterRevision: ahead })),
          status.OUT_OF_RANGE,
          "AFTER_REVISION_OUT_OF_RANGE",
          "after_revision",
        );
        const latest = BigInt(readErrorDetails(error)!.errorInfo!.metadata.latest_revision ?? "-1");
        expect(latest).toBeGreaterThanOrEqual(end!.revision);
        expect(latest).toBeLessThan(ahead);
        expect(error.details).toContain(`latest revision is ${latest}`);
      }
    },
  );
});

/** A function that runs a full garbage collection (V8's gc, exposed at run time). */
function garbageCollector(): () => void {
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc") as () => void;
}

describe("watchers that never read", () => {
  const ONE_JOB_WATCHERS = 8;
  const ALL_JOB_WATCHERS = 2;
  /** 4 s at LIMIT: long enough to make CHANGES speed changes even on a loaded machine. */
  const SIZE = 24 * MiB;
  const LIMIT = 6 * MiB;
  /** Speed changes per run: each is a status due to every watcher, far more than any buffer holds. */
  const CHANGES = 1001;
  let server: TestServer;
  /** On a connection of its own: stalled streams must not hold up the calls that drive the job. */
  let stalledClient: BackupClient;

  beforeAll(async () => {
    // Progress as often as the server can, to give slow watchers much to hold up.
    server = await startTestServer({ progressIntervalMs: 1 });
    stalledClient = createClient(BackupService, server.address, undefined, { "grpc.use_local_subchannel_pool": 1 });
  });

  afterAll(async () => {
    stalledClient.close();
    await server.stop();
  });

  interface BusyRun {
    readonly end: BackupStatus;
    /** Speed changes made while the job ran: each one a status for every watcher. */
    readonly changes: number;
    /** The most messages the server held for its watch streams at any sample. */
    readonly maxBuffered: number;
  }

  /**
   * Runs a throttled job to its end, making CHANGES changes of its speed
   * limit between two nearly equal values as fast as the API answers
   * (counted, not timed, so a slow machine makes as many): every change is
   * a status for every watcher. `whenStarted` runs once the job is active.
   */
  async function runBusyJob(whenStarted: (job: BackupStatus) => Promise<void> = async () => {}): Promise<BusyRun> {
    const job = await startJob(server, SIZE, LIMIT);
    await whenStarted(job);
    const ended = readAll(server.client.watchBackup({ uuid: job.uuid }));
    let running = true;
    void ended.finally(() => (running = false));
    let changes = 0;
    let maxBuffered = 0;
    while (running && changes < CHANGES) {
      try {
        await server.client.setBackupSpeed({ uuid: job.uuid, speedLimit: BigInt(LIMIT + (changes % 2)) });
        changes += 1;
      } catch {
        break; // the job ended between two changes
      }
      maxBuffered = Math.max(maxBuffered, server.server.watchBufferedMessages);
    }
    return { end: (await ended).at(-1)!, changes, maxBuffered };
  }

  const durationMs = (status: BackupStatus): number =>
    Number(status.endTime!.seconds - status.startTime!.seconds) * 1000 +
    (status.endTime!.nanos - status.startTime!.nanos) / 1e6;

  it("keep the server's memory bounded, do not slow the job, and then get the terminal status", async () => {
    const gc = garbageCollector();
    const baseline = await runBusyJob();
    expect(baseline.end.state).toBe(BackupState.DONE);

    gc();
    const heapBefore = process.memoryUsage().heapUsed;
    const controller = new AbortController();
    const watchers: Array<AsyncIterator<WatchBackupResponse>> = [];
    // All-jobs watchers open first; their first message is the job starting.
    const openings: Array<Promise<IteratorResult<WatchBackupResponse>>> = [];
    for (let i = 0; i < ALL_JOB_WATCHERS; i += 1) {
      const watcher = stalledClient.watchBackup({ uuid: "" }, { signal: controller.signal })[Symbol.asyncIterator]();
      watchers.push(watcher);
      openings.push(watcher.next());
    }
    await pause(100);
    const stalled = await runBusyJob(async (job) => {
      for (let i = 0; i < ONE_JOB_WATCHERS; i += 1) {
        const watcher = stalledClient
          .watchBackup({ uuid: job.uuid }, { signal: controller.signal })
          [Symbol.asyncIterator]();
        watchers.push(watcher);
        openings.push(watcher.next());
      }
      // Each reads its opening message, and then nothing while the job runs.
      for (const opening of await Promise.all(openings)) expect(opening.value?.status?.uuid).toBe(job.uuid);
    });
    gc();
    const heapGrowth = process.memoryUsage().heapUsed - heapBefore;

    expect(stalled.end.state).toBe(BackupState.DONE);
    // Far more statuses were due to each watcher than any buffer on the way holds...
    expect(stalled.changes).toBeGreaterThan(1000);
    // ...yet back-pressure kept about 16 messages per stream waiting in the server,
    expect(stalled.maxBuffered).toBeLessThanOrEqual(17 * (ONE_JOB_WATCHERS + ALL_JOB_WATCHERS + 1));
    // and memory did not grow with them. (This process is client and server:
    // the growth includes the statuses that fill the clients' flow-control
    // windows, ~6 MiB here; holding every status would add ~30 MiB more.)
    expect(heapGrowth).toBeLessThan(16 * MiB);
    // The job took as long as without the stalled watchers.
    expect(durationMs(stalled.end)).toBeLessThan(durationMs(baseline.end) * 1.2 + 200);

    // Now they read: each gets the terminal status (the one-job streams then end).
    for (const [index, watcher] of watchers.entries()) {
      let last: BackupStatus | undefined;
      for (;;) {
        const result = await watcher.next();
        if (result.done) break;
        last = result.value.status;
        if (index < ALL_JOB_WATCHERS && last?.uuid === stalled.end.uuid && last.state === BackupState.DONE) break;
      }
      expect(last).toMatchObject({ uuid: stalled.end.uuid, state: BackupState.DONE, revision: stalled.end.revision });
    }
    controller.abort();
  });
});
