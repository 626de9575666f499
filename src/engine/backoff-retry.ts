// Runs an attempt again in the background, with exponential backoff, until
// it succeeds: for writes the job store refused (a full state dir) that
// must reach it eventually without anyone asking.

export interface RetryDelays {
  /** Wait before the first retry, in ms. */
  readonly first: number;
  /** Longest wait between retries, in ms. */
  readonly max: number;
}

export class BackoffRetry {
  private readonly attempt: () => boolean;
  private readonly delays: RetryDelays;
  private delay: number;
  private timer: NodeJS.Timeout | undefined;

  /** `attempt` returns true when it succeeded (or there is nothing left to do). */
  constructor(attempt: () => boolean, delays: RetryDelays) {
    this.attempt = attempt;
    this.delays = delays;
    this.delay = delays.first;
  }

  /** Tries again after the current delay, unless a try is already scheduled. */
  schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.attempt()) {
        this.delay = this.delays.first;
        return;
      }
      this.delay = Math.min(this.delay * 2, this.delays.max);
      this.schedule();
    }, this.delay);
    // Never what keeps the process alive.
    this.timer.unref();
  }

  /** Nothing more to retry (it succeeded some other way, or shutdown): cancels the scheduled try. */
  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.delay = this.delays.first;
  }
}
