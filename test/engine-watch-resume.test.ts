// Watching with revisions: a watcher that reconnects with the last revision
// it saw gets only what changed after it (one job or every job, also across
// a restart), revisions only ever grow, and a watcher that never reads
// neither slows a job nor makes the engine buffer more than a status or two.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import type { StatusSubscription } from "../src/engine/backup-engine.js";
import { INTERRUPTED_MESSAGE, JOB_STORE_FILE } from "../src/engine/backup-engine.js";
import { toStoredJob } from "../src/engine/job-record.js";
import type { JobStatus } from "../src/engine/types.js";
import { JobStore } from "../src/store/job-store.js";
import {
  backupSpec,
  expectEngineError,
  KiB,
  MiB,
  sleep,
  startJob,
  useEngineSandbox,
  waitForEnd,
  waitForTransfer,
  waitUntil,
} from "./engine-helpers.js";

const fixture = useEngineSandbox();

type Next = JobStatus | "pending" | "ended";

/**
 * Reads a subscription with a timeout: each call gives the next status,
 * "pending" when none comes within `ms` (the read stays pending for the
 * next call, so nothing is lost), or "ended".
 */
function reader(subscription: AsyncIterable<JobStatus>): (ms: number) => Promise<Next> {
  const iterator = subscription[Symbol.asyncIterator]();
  let pending: Promise<IteratorResult<JobStatus>> | undefined;
  return async (ms) => {
    pending ??= iterator.next();
    const result = await Promise.race([pending, sleep(ms).then(() => "pending" as const)]);
    if (result === "pending") return result;
    pending = undefined;
    return result.done === true ? "ended" : result.value;
  };
}

async function readAll(source: AsyncIterable<JobStatus>): Promise<JobStatus[]> {
  const seen: JobStatus[] = [];
  for await (const status of source) seen.push(status);
  return seen;
}

function expectIncreasing(revisions: readonly number[]): void {
  for (let index = 1; index < revisions.length; index++) {
    expect(revisions[index]).toBeGreaterThan(revisions[index - 1] as number);
  }
}

describe("resuming the watch of one job", () => {
  it("continues after the last revision seen, missing no state change", async () => {
    const { engine } = fixture;
    const job = await startJob(fixture, "paced", 4 * MiB, 8 * MiB);
    const first: JobStatus[] = [];
    for await (const status of engine.watch(job.uuid)) {
      first.push(status);
      if (first.length === 3) break; // the client goes away
    }
    expect(first[0]).toMatchObject({ state: "active", revision: job.revision });
    const lastSeen = first.at(-1)?.revision ?? 0;
    await sleep(150);

    const second = await readAll(engine.watch(job.uuid, { afterRevision: lastSeen }));
    expect(second[0]?.revision).toBeGreaterThan(lastSeen);
    expect(second.at(-1)?.state).toBe("done");
    expectIncreasing([...first, ...second].map((status) => status.revision));
    expect(second.every((status) => status.uuid === job.uuid)).toBe(true);

    const end = second.at(-1) as JobStatus;
    // Nothing newer than the terminal status: the stream ends at once.
    expect(await readAll(engine.watch(job.uuid, { afterRevision: end.revision }))).toEqual([]);
    // Anything older: the terminal status, then the end.
    expect(await readAll(engine.watch(job.uuid, { afterRevision: end.revision - 1 }))).toEqual([end]);
    expect(await readAll(engine.watch(job.uuid, { afterRevision: 0 }))).toEqual([end]);
  });

  it("sends an active job's status only once it changes after the revision", async () => {
    const { engine } = fixture;
    const job = await startJob(fixture, "crawl", 512 * KiB, 1);
    await waitForTransfer(engine, job.uuid);
    await sleep(100); // the first chunk's progress is published
    const current = engine.query(job.uuid) as JobStatus;

    const next = reader(engine.watch(job.uuid, { afterRevision: current.revision }));
    expect(await next(200)).toBe("pending");
    engine.setSpeedLimit(job.uuid, 2);
    const changed = await next(500);
    expect(changed).toMatchObject({ state: "active", speedLimit: 2 });
    expect((changed as JobStatus).revision).toBeGreaterThan(current.revision);

    // An older revision: the current status at once.
    const behind = reader(engine.watch(job.uuid, { afterRevision: current.revision - 1 }));
    expect(await behind(100)).toMatchObject({ speedLimit: 2 });

    await engine.cancel(job.uuid);
    expect(await next(500)).toMatchObject({ state: "cancelled" });
    expect(await next(500)).toBe("ended");
    expect(await behind(500)).toMatchObject({ state: "cancelled" });
  });

  it("refuses an after_revision that is not a revision", async () => {
    const { engine } = fixture;
    const job = await startJob(fixture, "quick", 64 * KiB, 0);
    await waitForEnd(engine, job.uuid);
    for (const afterRevision of [-1, Number.NaN]) {
      await expectEngineError(
        () => engine.watch(job.uuid, { afterRevision }),
        "invalid-argument",
        "AFTER_REVISION_INVALID",
        "after_revision",
      );
    }
  });
});

describe("an after_revision this server never handed out", () => {
  it(
    "is OUT_OF_RANGE with the latest revision, for one job and for every job, after the state dir was " + "reset",
    async () => {
      const { sandbox } = fixture;
      await waitForEnd(fixture.engine, (await startJob(fixture, "before-1", 64 * KiB, 0)).uuid);
      const before = await waitForEnd(fixture.engine, (await startJob(fixture, "before-2", 64 * KiB, 0)).uuid);
      await fixture.engine.shutdown();
      // The state dir is reset: the server starts counting revisions again.
      await fs.rm(sandbox.state, { recursive: true });
      await fs.mkdir(sandbox.state);
      const engine = await fixture.restartEngine();
      const job = await waitForEnd(engine, (await startJob(fixture, "after", 64 * KiB, 0)).uuid);
      expect(job.revision).toBeLessThan(before.revision);

      for (const uuid of [job.uuid, undefined]) {
        const error = await expectEngineError(
          () => engine.watch(uuid, { afterRevision: before.revision }),
          "out-of-range",
          "AFTER_REVISION_OUT_OF_RANGE",
          "after_revision",
        );
        expect(error.metadata).toEqual({ latest_revision: String(job.revision) });
        expect(error.message).toContain(`${before.revision}`);
      }
      // The latest revision itself is fine: nothing newer yet.
      expect(await readAll(engine.watch(job.uuid, { afterRevision: job.revision }))).toEqual([]);
      const all = reader(engine.watch(undefined, { afterRevision: job.revision }));
      expect(await all(50)).toBe("pending");
    },
  );
});

describe("resuming the watch of every job", () => {
  it("sends every job changed after the revision, oldest first, then live changes", async () => {
    const { engine } = fixture;
    const a = await waitForEnd(engine, (await startJob(fixture, "a", 64 * KiB, 0)).uuid);
    const crawl = await startJob(fixture, "crawl", 512 * KiB, 1);
    const b = await waitForEnd(engine, (await startJob(fixture, "b", 64 * KiB, 0)).uuid);
    const c = await waitForEnd(engine, (await startJob(fixture, "c", 64 * KiB, 0)).uuid);
    const sped = engine.setSpeedLimit(crawl.uuid, 3);

    const resumed = engine.watch(undefined, { afterRevision: a.revision });
    const next = reader(resumed);
    const replay: JobStatus[] = [];
    for (let status = await next(100); typeof status !== "string"; status = await next(100)) replay.push(status);
    // Each job once, with its latest status; the crawling job last: its speed change is newest.
    expect(replay.map((status) => [status.uuid, status.state])).toEqual([
      [b.uuid, "done"],
      [c.uuid, "done"],
      [crawl.uuid, "active"],
    ]);
    expect(replay).toEqual([b, c, expect.objectContaining({ speedLimit: 3, revision: sped.revision })]);
    expectIncreasing(replay.map((status) => status.revision));

    // Then live changes.
    const d = await startJob(fixture, "d", 64 * KiB, 0);
    const live: JobStatus[] = [];
    while (!live.some((status) => status.uuid === d.uuid && status.state === "done")) {
      const status = await next(2000);
      if (typeof status === "string") throw new Error(`the all-jobs watch is ${status}`);
      live.push(status);
    }
    expect(live[0]).toMatchObject({ uuid: d.uuid, state: "active" });
    expect(live[0]?.revision).toBeGreaterThan(sped.revision);
    await engine.cancel(crawl.uuid);
    expect(await next(500)).toMatchObject({ uuid: crawl.uuid, state: "cancelled" });
    resumed.close();
    expect(await next(100)).toBe("ended");

    // Without a revision: the active jobs only, as before (none now).
    const fresh = engine.watch();
    expect(await reader(fresh)(100)).toBe("pending");
    fresh.close();
  });

  it("resumes across a restart: the jobs recovered at startup come first", async () => {
    const { sandbox } = fixture;
    let { engine } = fixture;
    const all = engine.watch();
    const seen: JobStatus[] = [];
    const job = await startJob(fixture, "before", 64 * KiB, 0);
    for await (const status of all) {
      seen.push(status);
      if (status.uuid === job.uuid && status.state === "done") break;
    }
    const lastSeen = Math.max(...seen.map((status) => status.revision));
    await engine.shutdown();

    // Meanwhile a server on this state dir died in the middle of a backup.
    const store = JobStore.open(path.join(sandbox.state, JOB_STORE_FILE));
    const backupFile = path.join(await fs.realpath(sandbox.out), "died.vma");
    const { requestId: _unused, ...last } = seen.at(-1)!;
    const dead: JobStatus = {
      ...last,
      uuid: "44444444-4444-4444-8444-444444444444",
      state: "active",
      backupFile,
      revision: lastSeen + 1,
    };
    store.save(toStoredJob(dead, { partialPath: `${backupFile}.partial` }));
    store.close();

    engine = await fixture.restartEngine();
    const next = reader(engine.watch(undefined, { afterRevision: lastSeen }));
    const first = await next(200);
    expect(first).toMatchObject({ uuid: dead.uuid, state: "error", errorMessage: INTERRUPTED_MESSAGE });
    expect((first as JobStatus).revision).toBeGreaterThan(lastSeen + 1);
    expect(await next(100)).toBe("pending");
    const after = await startJob(fixture, "after", 64 * KiB, 0);
    expect(await next(1000)).toMatchObject({ uuid: after.uuid, state: "active" });
    expect(after.revision).toBeGreaterThan((first as JobStatus).revision);
  });
});

describe("revisions", () => {
  it("increase with every change of a job, as every watcher sees them", async () => {
    const { engine } = fixture;
    const all: JobStatus[] = [];
    const watching = (async () => {
      for await (const status of engine.watch()) {
        all.push(status);
        if (all.filter((entry) => entry.state !== "active").length === 3) break;
      }
    })();
    const jobs = await Promise.all([
      startJob(fixture, "x", 2 * MiB, 8 * MiB),
      startJob(fixture, "y", 2 * MiB, 4 * MiB),
      startJob(fixture, "z", 1 * MiB, 0),
    ]);
    const own = await Promise.all(jobs.map((job) => readAll(engine.watch(job.uuid))));
    await watching;
    for (const [index, job] of jobs.entries()) {
      const mine = all.filter((status) => status.uuid === job.uuid);
      expect(mine.at(-1)?.state).toBe("done");
      expectIncreasing(mine.map((status) => status.revision));
      expectIncreasing((own[index] as JobStatus[]).map((status) => status.revision));
      // A status is the same whoever sees it: same revision, same content.
      expect(own[index]?.at(-1)).toEqual(mine.at(-1));
    }
    // Each revision belongs to one job.
    const owners = new Map<number, string>();
    for (const status of all) {
      expect(owners.get(status.revision) ?? status.uuid).toBe(status.uuid);
      owners.set(status.revision, status.uuid);
    }
  });
});

describe("a watcher that never reads", () => {
  it("neither slows the job nor holds more than a status or two", async () => {
    const { sandbox } = fixture;
    const engine = await fixture.restartEngine({ progressIntervalMs: 0 }); // every chunk is published
    const image = path.join(sandbox.src, "sparse.raw");
    await fs.writeFile(image, "");
    await fs.truncate(image, 256 * MiB);

    const timeBackup = async (name: string, watchers: (uuid: string) => StatusSubscription[]) => {
      const started = performance.now();
      const status = await engine.start(
        backupSpec({ backupFile: name, devices: [{ name: "d", source: { kind: "path", path: image } }] }),
      );
      const subscriptions = watchers(status.uuid);
      let maxBacklog = 0;
      const timer = setInterval(() => {
        for (const subscription of subscriptions) maxBacklog = Math.max(maxBacklog, subscription.backlog);
      }, 5);
      // Waits on the job itself, not on a watch (which would read).
      await waitUntil(() => engine.query(status.uuid)?.state !== "active", 20_000);
      clearInterval(timer);
      return { ms: performance.now() - started, maxBacklog, subscriptions, uuid: status.uuid };
    };

    await timeBackup("warm-up.vma", () => []); // the first read of the image fills the page cache
    const alone = await timeBackup("alone.vma", () => []);
    const all = engine.watch();
    const watched = await timeBackup("watched.vma", (uuid) => [all, engine.watch(uuid)]);
    console.info(
      `256 MiB sparse image: ${Math.round(alone.ms)} ms alone, ${Math.round(watched.ms)} ms with two idle watchers`,
    );

    expect(watched.ms).toBeLessThan(alone.ms * 1.5 + 200);
    expect(watched.maxBacklog).toBeLessThanOrEqual(3);
    for (const subscription of watched.subscriptions) {
      expect(subscription.backlog).toBeLessThanOrEqual(3);
      const next = reader(subscription);
      const statuses: JobStatus[] = [];
      for (let status = await next(50); typeof status !== "string"; status = await next(50)) statuses.push(status);
      // The terminal status is there, and nothing was queued per chunk.
      expect(statuses.at(-1)).toMatchObject({ uuid: watched.uuid, state: "done", transferredBytes: 256 * MiB });
      expect(statuses.length).toBeLessThanOrEqual(3);
    }
    all.close();
  });
});
