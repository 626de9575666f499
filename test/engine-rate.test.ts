// The measured rate and ETA: the sliding window on its own (fake clock),
// and a running job whose speed limit is raised and lowered: the measured
// rate follows within 2 seconds, both ways.
import { beforeEach, describe, expect, it } from "vitest";
import { RATE_WINDOW_MS, RateMeter } from "../src/engine/rate-meter.js";
import type { JobStatus } from "../src/engine/types.js";
import { backupSpec, blockPattern, MiB, sleep, useEngineSandbox, waitForEnd, writeSource } from "./engine-helpers.js";

describe("RateMeter", () => {
  let now: number;
  let meter: RateMeter;

  beforeEach(() => {
    now = 1000;
    meter = new RateMeter(() => now);
  });

  /** Advances the fake clock in `stepMs` steps at `bytesPerSecond`, recording each step. */
  function run(bytesPerSecond: number, durationMs: number, stepMs: number, from: number): number {
    let total = from;
    for (let elapsed = 0; elapsed < durationMs; elapsed += stepMs) {
      now += stepMs;
      total += (bytesPerSecond * stepMs) / 1000;
      meter.record(total);
    }
    return total;
  }

  it("measures a steady rate once a whole window has passed", () => {
    expect(meter.measuredRate()).toBe(0);
    let total = run(1_000_000, RATE_WINDOW_MS - 10, 10, 0);
    expect(meter.measuredRate()).toBe(0);
    total = run(1_000_000, 10, 10, total);
    expect(meter.measuredRate()).toBe(1_000_000);
    total = run(1_000_000, 5000, 7, total);
    expect(meter.measuredRate()).toBeCloseTo(1_000_000, -3);
    expect(total).toBeGreaterThan(5_000_000);
  });

  it("follows a change within its window and falls to 0 when nothing moves", () => {
    let total = run(1_000_000, 3000, 20, 0);
    total = run(4_000_000, RATE_WINDOW_MS / 2, 20, total);
    const halfway = meter.measuredRate();
    expect(halfway).toBeGreaterThan(2_000_000);
    expect(halfway).toBeLessThan(3_000_000);
    run(4_000_000, RATE_WINDOW_MS / 2, 20, total);
    expect(meter.measuredRate()).toBeCloseTo(4_000_000, -4);

    // A stall: the rate decays as time passes without records, to 0 after a window.
    now += RATE_WINDOW_MS / 2;
    expect(meter.measuredRate()).toBeCloseTo(2_000_000, -4);
    now += RATE_WINDOW_MS / 2 + 1;
    expect(meter.measuredRate()).toBe(0);
  });

  it("does not overstate a throttled job whose first chunk went through at once", () => {
    now += 5;
    meter.record(64 * 1024); // the first chunk: read before the limiter waits
    let total = run(256 * 1024, 100, 50, 64 * 1024);
    expect(meter.measuredRate()).toBe(0); // unknown yet, rather than ~3x the limit
    total = run(256 * 1024, RATE_WINDOW_MS - 100, 50, total);
    expect(meter.measuredRate()).toBeLessThanOrEqual(1.3 * 256 * 1024);
    run(256 * 1024, RATE_WINDOW_MS / 2, 50, total);
    expect(meter.measuredRate()).toBeCloseTo(256 * 1024, -3);
  });

  it("averages bursts: one chunk every 250 ms", () => {
    let total = 0;
    for (let step = 0; step < 40; step++) {
      now += 250;
      total += 256 * 1024;
      meter.record(total);
    }
    expect(meter.measuredRate()).toBe(1024 * 1024);
    now += 125; // half-way to the next chunk
    expect(meter.measuredRate()).toBeGreaterThan(0.8 * 1024 * 1024);
  });
});

describe("rate and ETA of a running job", () => {
  const fixture = useEngineSandbox();

  /** Polls the job every 25 ms until its rate is within 15 % of `target`; returns the wait in ms. */
  async function timeUntilRate(
    uuid: string,
    target: number,
    limitMs: number,
  ): Promise<{ ms: number; status: JobStatus }> {
    const started = performance.now();
    for (;;) {
      const status = fixture.engine.query(uuid) as JobStatus;
      if (Math.abs(status.rate - target) <= target * 0.15) return { ms: performance.now() - started, status };
      if (performance.now() - started > limitMs) {
        throw new Error(`rate ${status.rate} did not reach ${target} within ${limitMs} ms`);
      }
      await sleep(25);
    }
  }

  /** Checks that the rate stays near `target` for `ms`. */
  async function holdsRate(uuid: string, target: number, ms: number): Promise<void> {
    const until = performance.now() + ms;
    while (performance.now() < until) {
      const rate = (fixture.engine.query(uuid) as JobStatus).rate;
      expect(rate).toBeGreaterThan(target * 0.8);
      expect(rate).toBeLessThan(target * 1.2);
      await sleep(50);
    }
  }

  it("shows a speed change in the measured rate within 2 seconds, both ways, with a matching ETA", async () => {
    const { sandbox, engine } = fixture;
    const total = 64 * MiB;
    const source = await writeSource(
      sandbox,
      "d.raw",
      blockPattern(total, (block) => block % 2 === 0),
    );
    const status = await engine.start(
      backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit: 4 * MiB }),
    );
    expect(status.rate).toBe(0);
    expect(status.etaMs).toBeUndefined();

    await timeUntilRate(status.uuid, 4 * MiB, 3000);
    await holdsRate(status.uuid, 4 * MiB, 300);
    const current = engine.query(status.uuid) as JobStatus;
    expect(current.etaMs).toBeDefined();
    const expectedEta = ((total - current.transferredBytes) * 1000) / current.rate;
    expect(Math.abs((current.etaMs ?? 0) - expectedEta)).toBeLessThanOrEqual(1);
    // About 60 MiB left at 4 MiB/s: some 15 s.
    expect(current.etaMs).toBeGreaterThan(10_000);
    expect(current.etaMs).toBeLessThan(20_000);

    // The rate first shows the new speed within 2 s, and from 2 s on it
    // stays there (the limiter may pause a little after a lowering: the
    // last fast chunk is paid at the new rate, which the rate shows too).
    let changedAt = performance.now();
    engine.setSpeedLimit(status.uuid, 16 * MiB);
    const up = await timeUntilRate(status.uuid, 16 * MiB, 2000);
    await sleep(changedAt + 2000 - performance.now());
    await holdsRate(status.uuid, 16 * MiB, 300);

    changedAt = performance.now();
    engine.setSpeedLimit(status.uuid, 2 * MiB);
    const down = await timeUntilRate(status.uuid, 2 * MiB, 2000);
    await sleep(changedAt + 2000 - performance.now());
    await holdsRate(status.uuid, 2 * MiB, 300);
    expect(up.ms).toBeLessThan(2000);
    expect(down.ms).toBeLessThan(2000);
    console.info(`rate followed the speed change in ${Math.round(up.ms)} ms (up) and ${Math.round(down.ms)} ms (down)`);

    const [end] = await engine.cancel(status.uuid);
    expect(end).toMatchObject({ state: "cancelled", rate: 0 });
    expect(end?.etaMs).toBeUndefined();
  });

  it("measures an unlimited job and reports no rate once it is done", async () => {
    const { sandbox, engine } = fixture;
    const source = await writeSource(
      sandbox,
      "d.raw",
      blockPattern(16 * MiB, (block) => block % 4 === 0),
    );
    const status = await engine.start(backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }] }));
    const seen: JobStatus[] = [];
    for await (const update of engine.watch(status.uuid)) seen.push(update);
    const end = seen.at(-1) as JobStatus;
    expect(end).toMatchObject({ state: "done", rate: 0 });
    expect(end.etaMs).toBeUndefined();
    // Within its first second a job has no measured rate yet, hence no ETA.
    for (const update of seen.slice(1, -1)) {
      if (update.rate > 0) expect(update.etaMs).toBeGreaterThanOrEqual(0);
      else expect(update.etaMs).toBeUndefined();
    }
    expect((await waitForEnd(engine, status.uuid)).rate).toBe(0);
  });
});
