// The speed limit: the limiter on its own (aborts, live limit changes, chunk
// sizes) on fake timers and its clock, and a throttled job measured over
// 2-second windows in real time, end to end.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { SpeedLimiter } from "../src/engine/speed-limiter.js";
import {
  backupSpec,
  blockPattern,
  CLUSTER,
  KiB,
  MiB,
  sleep,
  useEngineSandbox,
  waitForEnd,
  writeSource,
} from "./engine-helpers.js";

describe("SpeedLimiter", () => {
  // Fake timers move Date.now, the limiter's clock here, only when a test advances them.
  const clock = (): number => Date.now();
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("never waits when unlimited", async () => {
    const limiter = new SpeedLimiter(0, clock);
    const signal = new AbortController().signal;
    const started = clock();
    const acquiring = (async () => {
      for (let index = 0; index < 1000; index++) await limiter.acquire(4 * MiB, signal);
    })();
    await vi.runAllTimersAsync();
    await acquiring;
    expect(clock() - started).toBeLessThan(100);
  });

  it("sizes chunks to a fraction of a second of data, in whole units", () => {
    expect(new SpeedLimiter(0).chunkSize(4 * MiB, CLUSTER)).toBe(4 * MiB);
    expect(new SpeedLimiter(8 * MiB).chunkSize(4 * MiB, CLUSTER)).toBe(6 * CLUSTER);
    expect(new SpeedLimiter(1).chunkSize(4 * MiB, CLUSTER)).toBe(CLUSTER);
    expect(new SpeedLimiter(10 ** 12).chunkSize(4 * MiB, CLUSTER)).toBe(4 * MiB);
  });

  it("admits the first chunk at once and paces the next ones at the limit", async () => {
    const limiter = new SpeedLimiter(640 * KiB, clock); // 64 KiB per 100 ms
    const signal = new AbortController().signal;
    const started = clock();
    const acquiring = (async () => {
      for (let index = 0; index < 4; index++) await limiter.acquire(64 * KiB, signal);
    })();
    await vi.runAllTimersAsync();
    await acquiring;
    const elapsed = clock() - started;
    expect(elapsed).toBeGreaterThanOrEqual(295);
    expect(elapsed).toBeLessThan(450);
  });

  it("ends a wait as soon as the signal aborts", async () => {
    const limiter = new SpeedLimiter(1, clock);
    const controller = new AbortController();
    await limiter.acquire(64 * KiB, controller.signal);
    const waiting = limiter.acquire(64 * KiB, controller.signal);
    const reason = new Error("stop");
    const rejected = expect(waiting).rejects.toBe(reason);
    setTimeout(() => controller.abort(reason), 20);
    const started = clock();
    await vi.advanceTimersByTimeAsync(20);
    await rejected;
    expect(clock() - started).toBeLessThan(200);
    await expect(limiter.acquire(1, controller.signal)).rejects.toBe(reason);
  });

  it("recomputes a wait when the limit changes", async () => {
    const limiter = new SpeedLimiter(1, clock);
    const signal = new AbortController().signal;
    await limiter.acquire(64 * KiB, signal);
    const waiting = limiter.acquire(64 * KiB, signal);
    setTimeout(() => limiter.setSpeedLimit(64 * MiB), 20);
    const started = clock();
    await vi.advanceTimersByTimeAsync(20);
    await waiting;
    expect(clock() - started).toBeLessThan(200);
    expect(limiter.bytesPerSecondLimit).toBe(64 * MiB);

    // And the other way: from unlimited down to a crawl, then lifted.
    limiter.setSpeedLimit(0);
    await limiter.acquire(64 * KiB, signal);
    limiter.setSpeedLimit(1);
    const slow = limiter.acquire(64 * KiB, signal);
    let done = false;
    void slow.then(() => {
      done = true;
    });
    await vi.advanceTimersByTimeAsync(50);
    expect(done).toBe(false);
    limiter.setSpeedLimit(0);
    await slow;
  });
});

describe("a throttled job", () => {
  const fixture = useEngineSandbox();

  /** Samples (ms, transferred bytes) of a job every 20 ms while it is active. */
  function sample(uuid: string): { samples: Array<[number, number]>; stop: () => void } {
    const samples: Array<[number, number]> = [];
    const timer = setInterval(() => {
      const status = fixture.engine.query(uuid);
      if (status?.state === "active") samples.push([performance.now(), status.transferredBytes]);
    }, 20);
    return { samples, stop: () => clearInterval(timer) };
  }

  /** Rates (bytes/s) over every window of `windowMs` that starts at a sample. */
  function windowRates(samples: ReadonlyArray<[number, number]>, windowMs: number): number[] {
    const rates: number[] = [];
    for (const [index, [startTime, startBytes]] of samples.entries()) {
      const end = samples.slice(index + 1).find(([time]) => time >= startTime + windowMs);
      if (end === undefined) break;
      rates.push(((end[1] - startBytes) * 1000) / (end[0] - startTime));
    }
    return rates;
  }

  it("holds 8 MiB/s over every 2-second window to within 15 %", async () => {
    const { sandbox, engine } = fixture;
    const speedLimit = 8 * MiB;
    const source = await writeSource(
      sandbox,
      "d.raw",
      blockPattern(32 * MiB, (block) => block % 4 === 0),
    );
    const started = performance.now();
    const status = await engine.start(
      backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit }),
    );
    const sampler = sample(status.uuid);
    const end = await waitForEnd(engine, status.uuid);
    const elapsed = performance.now() - started;
    sampler.stop();

    expect(end.state).toBe("done");
    // 32 MiB at 8 MiB/s: 4 s, less the first chunk admitted at once.
    expect(elapsed).toBeGreaterThan(3600);
    expect(elapsed).toBeLessThan(4600);
    const rates = windowRates(sampler.samples, 2000);
    expect(rates.length).toBeGreaterThan(20);
    for (const measured of rates) {
      expect(measured).toBeGreaterThan(speedLimit * 0.85);
      expect(measured).toBeLessThan(speedLimit * 1.15);
    }
  });

  it("changes speed while running", async () => {
    const { sandbox, engine } = fixture;
    const source = await writeSource(
      sandbox,
      "d.raw",
      blockPattern(64 * MiB, (block) => block % 2 === 0),
    );
    const status = await engine.start(
      backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], speedLimit: 2 * MiB }),
    );
    const sampler = sample(status.uuid);
    await sleep(1000);
    const changedAt = performance.now();
    const changed = engine.setSpeedLimit(status.uuid, 16 * MiB);
    expect(changed.speedLimit).toBe(16 * MiB);
    await sleep(1200);
    sampler.stop();
    await engine.cancel(status.uuid);

    const before = windowRates(
      sampler.samples.filter(([time]) => time < changedAt),
      500,
    );
    const after = windowRates(
      sampler.samples.filter(([time]) => time > changedAt + 100),
      1000,
    );
    expect(before.length).toBeGreaterThan(0);
    expect(after.length).toBeGreaterThan(0);
    for (const measured of before) expect(measured).toBeLessThan(2 * MiB * 1.3);
    for (const measured of after) {
      expect(measured).toBeGreaterThan(16 * MiB * 0.8);
      expect(measured).toBeLessThan(16 * MiB * 1.2);
    }
    expect(engine.query(status.uuid)?.speedLimit).toBe(16 * MiB);
  });
});
