// Measures how fast a job moves: a sliding window of (time, bytes) samples.
// The window is short so that a speed change shows in the measured rate
// within about its length (the API promises 2 seconds, both ways), yet long
// enough to hold many chunks so that chunk-sized steps average out.

/** Length of the window the rate is measured over. */
export const RATE_WINDOW_MS = 1000;
/** Samples closer together than this are merged (bounds the sample count). */
const SAMPLE_SPACING_MS = 50;

interface Sample {
  readonly time: number;
  readonly bytes: number;
}

export class RateMeter {
  private readonly clock: () => number;
  private readonly startTime: number;
  /**
   * Oldest first. The last sample is always the latest observation, every
   * other one at least SAMPLE_SPACING_MS after its predecessor, and at most
   * one lies before the window (to interpolate its start).
   */
  private readonly samples: Sample[];

  /** Starts measuring at 0 bytes now; `clock` returns monotonic milliseconds. */
  constructor(clock: () => number = () => performance.now()) {
    this.clock = clock;
    this.startTime = clock();
    this.samples = [{ time: this.startTime, bytes: 0 }];
  }

  /** Notes that `totalBytes` bytes have been processed so far. */
  record(totalBytes: number): void {
    const sample = { time: this.clock(), bytes: totalBytes };
    const count = this.samples.length;
    const previous = count >= 2 ? (this.samples[count - 2] as Sample) : undefined;
    if (previous !== undefined && sample.time - previous.time < SAMPLE_SPACING_MS) {
      this.samples[count - 1] = sample;
    } else {
      this.samples.push(sample);
    }
    this.prune(sample.time);
  }

  /**
   * Bytes per second over the last RATE_WINDOW_MS; falls towards 0 while
   * nothing is recorded. 0 (unknown) until a whole window has passed: the
   * first chunk goes through before the speed limiter makes anyone wait, so
   * a younger measurement overstates a throttled job's rate many times over.
   */
  measuredRate(): number {
    const now = this.clock();
    if (now - this.startTime < RATE_WINDOW_MS) return 0;
    this.prune(now);
    const first = this.samples[0] as Sample;
    const latest = this.samples[this.samples.length - 1] as Sample;
    const windowStart = now - RATE_WINDOW_MS;
    let startTime = first.time;
    let startBytes = first.bytes;
    const second = this.samples[1];
    if (first.time < windowStart) {
      if (second === undefined) {
        // Nothing happened within the window.
        return 0;
      }
      // Interpolate the bytes at the window's start between the samples around it.
      const fraction = (windowStart - first.time) / (second.time - first.time);
      startTime = windowStart;
      startBytes = first.bytes + (second.bytes - first.bytes) * fraction;
    }
    const elapsed = now - startTime;
    if (elapsed <= 0) return 0;
    return Math.max(0, Math.round(((latest.bytes - startBytes) * 1000) / elapsed));
  }

  /** Drops samples that are no longer needed for a window ending at `now`. */
  private prune(now: number): void {
    const windowStart = now - RATE_WINDOW_MS;
    while (this.samples.length >= 2 && (this.samples[1] as Sample).time <= windowStart) this.samples.shift();
  }
}
