// The status hub: progress coalescing, bounded queues for slow watchers,
// state changes never dropped, subscriptions freed at once; and watching
// jobs through the engine.
import { describe, expect, it, vi } from "vitest";
import { StatusHub } from "../src/engine/status-hub.js";
import type { JobState, JobStatus } from "../src/engine/types.js";
import { MiB, sleep, startJob, useEngineSandbox, waitForEnd } from "./engine-helpers.js";

let revision = 0;

function status(uuid: string, state: JobState, transferredBytes = 0): JobStatus {
  revision += 1;
  return {
    uuid,
    state,
    errorMessage: "",
    backupFile: `/backups/${uuid}.vma`,
    format: "vma",
    totalBytes: 1_000_000,
    transferredBytes,
    zeroBytes: 0,
    startTime: new Date(0),
    speedLimit: 0,
    devices: [],
    rate: 0,
    revision,
    updateTime: new Date(0),
  };
}

async function readAll(source: AsyncIterable<JobStatus>): Promise<JobStatus[]> {
  const seen: JobStatus[] = [];
  for await (const update of source) seen.push(update);
  return seen;
}

/** The next value of a subscription, or "pending" if none arrives within `ms`. */
async function nextWithin(
  iterator: AsyncIterator<JobStatus>,
  ms: number,
): Promise<IteratorResult<JobStatus> | "pending"> {
  return Promise.race([iterator.next(), sleep(ms).then(() => "pending" as const)]);
}

/** Runs `body` on fake timers; Date.now (the hub's clock in these tests) moves only when it advances them. */
async function withFakeTimers(body: () => Promise<void>): Promise<void> {
  vi.useFakeTimers();
  try {
    await body();
  } finally {
    vi.useRealTimers();
  }
}

const fakeClock = (): number => Date.now();

describe("StatusHub", () => {
  it("publishes progress at most once per interval, the latest counters winning", () =>
    withFakeTimers(async () => {
      const hub = new StatusHub(100, fakeClock);
      const subscription = hub.subscribe("a", []);
      hub.publishState(status("a", "active"));
      const received: Array<{ at: number; status: JobStatus }> = [];
      const reading = (async () => {
        for await (const update of subscription) received.push({ at: fakeClock(), status: update });
      })();

      let counter = 0;
      const startedAt = fakeClock();
      while (fakeClock() - startedAt < 350) {
        counter += 1;
        const current = counter;
        hub.publishProgress("a", () => status("a", "active", current));
        await vi.advanceTimersByTimeAsync(1);
      }
      // The trailing publication carries the counters of its moment.
      await vi.advanceTimersByTimeAsync(150);
      const progress = received.filter((entry) => entry.status.state === "active").slice(1);
      expect(progress.length).toBeGreaterThanOrEqual(2);
      expect(progress.length).toBeLessThanOrEqual(5);
      for (let index = 1; index < progress.length; index++) {
        expect((progress[index]?.at ?? 0) - (progress[index - 1]?.at ?? 0)).toBeGreaterThanOrEqual(90);
      }
      expect(progress.at(-1)?.status.transferredBytes).toBe(counter);

      hub.publishState(status("a", "done", counter));
      await reading;
      expect(received.at(-1)?.status.state).toBe("done");
      expect(hub.subscriberCount).toBe(0);
    }));

  it("keeps one pending progress per job for a slow reader and never drops a state change", async () => {
    const hub = new StatusHub(0);
    const all = hub.subscribe(undefined, []);
    hub.publishState(status("a", "active"));
    hub.publishState(status("b", "active"));
    for (let counter = 1; counter <= 10_000; counter++) {
      hub.publishProgress("a", () => status("a", "active", counter));
      hub.publishProgress("b", () => status("b", "active", counter * 2));
    }
    hub.publishState(status("a", "error", 10_000));
    for (let counter = 10_001; counter <= 20_000; counter++) {
      hub.publishProgress("b", () => status("b", "active", counter * 2));
    }

    const iterator = all[Symbol.asyncIterator]();
    const seen: JobStatus[] = [];
    for (;;) {
      const next = await nextWithin(iterator, 20);
      if (next === "pending" || next.done === true) break;
      seen.push(next.value);
    }
    expect(seen.map((update) => [update.uuid, update.state, update.transferredBytes])).toEqual([
      ["a", "active", 0],
      ["b", "active", 0],
      ["b", "active", 40_000],
      ["a", "error", 10_000],
    ]);
    // An all-jobs subscription stays open until closed.
    all.close();
    expect(await iterator.next()).toEqual({ done: true, value: undefined });
    expect(hub.subscriberCount).toBe(0);
  });

  it("removes a closed subscription at once, also while a read is pending", async () => {
    const hub = new StatusHub(0);
    const one = hub.subscribe("a", [status("a", "active")]);
    const all = hub.subscribe(undefined, []);
    expect(hub.subscriberCount).toBe(2);
    const iterator = all[Symbol.asyncIterator]();
    const pending = iterator.next();
    all.close();
    expect(await pending).toEqual({ done: true, value: undefined });
    one.close();
    expect(hub.subscriberCount).toBe(0);

    // Leaving a for-await loop early closes the subscription too.
    const third = hub.subscribe("a", [status("a", "active")]);
    for await (const update of third) {
      expect(update.uuid).toBe("a");
      break;
    }
    expect(hub.subscriberCount).toBe(0);
  });

  it("tells a polling reader of each status and of its end, without promises", () => {
    const hub = new StatusHub(0);
    const one = hub.subscribe("a", [status("a", "active")]);
    const calls: string[] = [];
    const drain = (): void => {
      for (let update = one.poll(); update !== undefined; update = one.poll()) calls.push(update.state);
      calls.push(one.done ? "end" : "wait");
    };
    one.onReadable(drain);
    drain(); // the opening status was queued before the listener
    hub.publishState(status("a", "active"));
    hub.publishNow({ ...status("a", "active"), speedLimit: 5 });
    hub.publishState(status("a", "done"));
    // The listener drains each status as it is published; the terminal one ends the subscription.
    expect(calls).toEqual(["active", "wait", "active", "wait", "active", "wait", "done", "end"]);
    expect(one.done).toBe(true);
    expect(hub.subscriberCount).toBe(0);
    expect(one.poll()).toBeUndefined();
  });

  it("calls a polling reader once more when its subscription is closed", () => {
    const hub = new StatusHub(0);
    const all = hub.subscribe(undefined, []);
    const listener = vi.fn();
    all.onReadable(listener);
    all.close();
    all.close();
    expect(listener).toHaveBeenCalledTimes(1);
    expect(all.done).toBe(true);
    expect(hub.subscriberCount).toBe(0);
  });

  it("detaches a one-job subscription at its terminal status, before it is read", async () => {
    const hub = new StatusHub(0);
    const one = hub.subscribe("a", [status("a", "active")]);
    hub.publishState(status("a", "cancelled"));
    expect(hub.subscriberCount).toBe(0);
    expect((await readAll(one)).map((update) => update.state)).toEqual(["active", "cancelled"]);

    const finished = hub.subscribe("a", [status("a", "done")]);
    expect(hub.subscriberCount).toBe(0);
    expect((await readAll(finished)).map((update) => update.state)).toEqual(["done"]);
  });

  it("publishes a change at once, coalesced like progress for a slow reader, with no trailing duplicate", () =>
    withFakeTimers(async () => {
      const hub = new StatusHub(1000, fakeClock);
      const slow = hub.subscribe("a", []);
      hub.publishState(status("a", "active"));
      hub.publishProgress("a", () => status("a", "active", 1)); // within the interval: waits for its timer
      expect(slow.backlog).toBe(1);
      const changed = status("a", "active", 2);
      hub.publishNow(changed);
      expect(slow.backlog).toBe(2);
      hub.publishNow(status("a", "active", 3)); // replaces the unread one
      expect(slow.backlog).toBe(2);
      await vi.advanceTimersByTimeAsync(1100); // the trailing progress timer was cancelled
      expect(slow.backlog).toBe(2);
      const iterator = slow[Symbol.asyncIterator]();
      expect((await iterator.next()).value).toMatchObject({ state: "active", transferredBytes: 0 });
      expect((await iterator.next()).value).toMatchObject({ state: "active", transferredBytes: 3 });
      // Unread, it would have been superseded by the terminal status, like progress.
      hub.publishNow(status("a", "active", 4));
      hub.publishState(status("a", "done", 4));
      expect((await readAll(slow)).map((update) => [update.state, update.transferredBytes])).toEqual([["done", 4]]);
      // A job that is not active: nothing.
      const late = hub.subscribe("a", []);
      hub.publishNow(status("a", "active", 4));
      expect(late.backlog).toBe(0);
      late.close();
    }));

  it("never gives a watcher a revision of a job it already has", async () => {
    const hub = new StatusHub(0);
    const first = status("a", "active");
    hub.publishState(first);
    // Joined with the current snapshot, which is then published again unchanged.
    const one = hub.subscribe("a", [first]);
    const iterator = one[Symbol.asyncIterator]();
    expect((await iterator.next()).value).toBe(first);
    const pending = iterator.next();
    hub.publishProgress("a", () => first);
    const newer = status("a", "active", 5);
    hub.publishProgress("a", () => newer);
    expect((await pending).value).toBe(newer);
    hub.publishProgress("a", () => first); // older still
    expect(one.backlog).toBe(0);
    one.close();
  });

  it("makes ended subscriptions that yield nothing", async () => {
    const hub = new StatusHub(0);
    const ended = hub.endedSubscription();
    expect(ended.backlog).toBe(0);
    expect(await readAll(ended)).toEqual([]);
    expect(hub.subscriberCount).toBe(0);
  });

  it("ends every subscription on endAll after what it has queued", async () => {
    const hub = new StatusHub(0);
    const all = hub.subscribe(undefined, [status("a", "active")]);
    const one = hub.subscribe("b", [status("b", "active")]);
    hub.publishState(status("a", "cancelled"));
    hub.endAll();
    expect(hub.subscriberCount).toBe(0);
    expect((await readAll(all)).map((update) => update.state)).toEqual(["active", "cancelled"]);
    expect((await readAll(one)).map((update) => update.state)).toEqual(["active"]);
  });
});

describe("watching jobs", () => {
  const fixture = useEngineSandbox({ progressIntervalMs: 100 });

  it("gives a watcher that does not read the latest progress and every state change", async () => {
    const { engine } = fixture;
    const job = await startJob(fixture, "slow", 8 * MiB, 8 * MiB);
    const watcher = engine.watch(job.uuid);
    const iterator = watcher[Symbol.asyncIterator]();
    await sleep(500);

    const first = await iterator.next();
    expect(first.value).toMatchObject({ state: "active", transferredBytes: 0 });
    // Half a second of progress collapsed into one status, close to the current counters.
    const second = await iterator.next();
    expect(second.value?.state).toBe("active");
    const now = engine.query(job.uuid)?.transferredBytes ?? 0;
    expect(second.value?.transferredBytes).toBeGreaterThan(2 * MiB);
    expect(now - (second.value?.transferredBytes ?? 0)).toBeLessThanOrEqual(2 * MiB);

    // Not reading until the end: the terminal status supersedes the pending progress.
    await waitForEnd(engine, job.uuid);
    const rest: JobStatus[] = [];
    for (;;) {
      const next = await iterator.next();
      if (next.done === true) break;
      rest.push(next.value);
    }
    expect(rest.length).toBeLessThanOrEqual(2);
    expect(rest.at(-1)).toMatchObject({ state: "done", transferredBytes: 8 * MiB });
  });

  it("sends progress at most once per interval while a job runs", async () => {
    const { engine } = fixture;
    const job = await startJob(fixture, "paced", 4 * MiB, 4 * MiB);
    const received: Array<{ at: number; status: JobStatus }> = [];
    for await (const update of engine.watch(job.uuid)) received.push({ at: performance.now(), status: update });
    expect(received.at(-1)?.status.state).toBe("done");
    const progress = received.slice(1, -1);
    // About one second at 100 ms: ~10 updates, never closer than the interval.
    expect(progress.length).toBeGreaterThanOrEqual(5);
    expect(progress.length).toBeLessThanOrEqual(12);
    for (let index = 1; index < progress.length; index++) {
      expect((progress[index]?.at ?? 0) - (progress[index - 1]?.at ?? 0)).toBeGreaterThanOrEqual(80);
    }
    const counters = progress.map((entry) => entry.status.transferredBytes);
    expect([...counters].sort((a, b) => a - b)).toEqual(counters);
  });

  it("shows an all-jobs watcher the active jobs first, then jobs started later", async () => {
    const { engine } = fixture;
    const running = await startJob(fixture, "running", 4 * MiB, 1);
    const all = engine.watch();
    const iterator = all[Symbol.asyncIterator]();
    expect((await iterator.next()).value).toMatchObject({ uuid: running.uuid, state: "active" });

    const later = await startJob(fixture, "later", 256 * 1024, 0);
    const seen: JobStatus[] = [];
    while (!seen.some((update) => update.uuid === later.uuid && update.state === "done")) {
      const next = await iterator.next();
      if (next.done === true) throw new Error("the all-jobs watch ended");
      seen.push(next.value);
    }
    expect(seen.find((update) => update.uuid === later.uuid)?.state).toBe("active");
    // It stays open after that job ended, until closed.
    expect(await nextWithin(iterator, 50)).toBe("pending");
    all.close();
    expect(await iterator.next()).toEqual({ done: true, value: undefined });
  });

  it("answers a watch of a finished job with its final status and ends", async () => {
    const { engine } = fixture;
    const job = await startJob(fixture, "quick", 128 * 1024, 0);
    const end = await waitForEnd(engine, job.uuid);
    expect(await readAll(engine.watch(job.uuid))).toEqual([end]);
  });
});
