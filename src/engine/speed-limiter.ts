// Holds a job's source data to its speed limit. A chunk may start once
// the previous one has been paid for at the current limit, so over any
// window the job moves at most limit × window plus one chunk; chunks are
// sized to a fraction of a second of data to keep that excess small. The
// limit can change at any time (waiters recompute at once) and every wait
// ends as soon as the job's abort signal fires. (What the job really moves
// is measured by rate-meter.ts.)

/** Pause a throttled reader aims for between two chunks. */
const TARGET_CHUNK_SECONDS = 0.05;
/**
 * Lateness of the timer that is made up for: a reader that resumes a little
 * after its slot keeps the schedule, so timer jitter does not lower the
 * speed below the limit; after a longer stall (a slow disk) no credit is banked.
 */
const MAX_CATCH_UP_MS = 50;
/** Longest single timer; waits are re-evaluated after it. */
const MAX_SLEEP_MS = 60_000;

export type Clock = () => number;

export class SpeedLimiter {
  /** Bytes per second; 0 means unlimited. */
  private speedLimit: number;
  private readonly clock: Clock;
  /** When the last admitted chunk started (clock ms) and how big it was. */
  private lastStart = Number.NEGATIVE_INFINITY;
  private lastBytes = 0;
  private readonly wakers = new Set<() => void>();

  /** `bytesPerSecond` 0 means unlimited. `clock` returns milliseconds. */
  constructor(bytesPerSecond: number, clock: Clock = () => performance.now()) {
    this.speedLimit = bytesPerSecond;
    this.clock = clock;
  }

  get bytesPerSecondLimit(): number {
    return this.speedLimit;
  }

  /** Changes the limit (0 = unlimited); waiting callers recompute their slot at once. */
  setSpeedLimit(bytesPerSecond: number): void {
    this.speedLimit = bytesPerSecond;
    for (const wake of [...this.wakers]) wake();
  }

  /**
   * A read size for the current limit: `maxBytes` when unlimited, else about
   * TARGET_CHUNK_SECONDS of data, a multiple of `unit`, at least one unit.
   */
  chunkSize(maxBytes: number, unit: number): number {
    if (this.speedLimit === 0) return maxBytes;
    const units = Math.floor((this.speedLimit * TARGET_CHUNK_SECONDS) / unit);
    return Math.min(maxBytes, Math.max(1, units) * unit);
  }

  /**
   * Waits until `bytes` more may be processed. Rejects with the signal's
   * reason when `signal` aborts, including in the middle of a wait.
   */
  async acquire(bytes: number, signal: AbortSignal): Promise<void> {
    for (;;) {
      signal.throwIfAborted();
      const now = this.clock();
      const readyAt = this.speedLimit === 0 ? now : this.lastStart + (this.lastBytes * 1000) / this.speedLimit;
      if (now >= readyAt) {
        this.lastStart = now - readyAt <= MAX_CATCH_UP_MS ? readyAt : now;
        this.lastBytes = bytes;
        return;
      }
      await this.sleep(Math.min(readyAt - now, MAX_SLEEP_MS), signal);
    }
  }

  /** Resolves after `ms`, or early on a change of the limit; rejects on abort. */
  private sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const finish = (): void => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        this.wakers.delete(onWake);
      };
      const onWake = (): void => {
        finish();
        resolve();
      };
      const onAbort = (): void => {
        finish();
        reject(signal.reason);
      };
      const timer = setTimeout(onWake, ms);
      this.wakers.add(onWake);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}
