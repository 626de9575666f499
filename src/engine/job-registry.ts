// The jobs the engine knows: active ones (live Job objects) and a bounded
// history of finished ones, kept as their final status (plain data, so a
// persistent store can take over later).
import type { Job } from "./job.js";
import type { JobStatus } from "./types.js";

export const DEFAULT_HISTORY_LIMIT = 1000;

export class JobRegistry {
  private readonly historyLimit: number;
  private readonly active = new Map<string, Job>();
  /** Insertion order is finishing order; the oldest is evicted first. */
  private readonly history = new Map<string, JobStatus>();
  private latestUuid: string | undefined;

  constructor(historyLimit = DEFAULT_HISTORY_LIMIT) {
    this.historyLimit = historyLimit;
  }

  /** Registers a job that just started; it becomes the latest. */
  add(job: Job): void {
    this.active.set(job.uuid, job);
    this.latestUuid = job.uuid;
  }

  /** Moves a job that ended into the history. */
  complete(job: Job): void {
    this.active.delete(job.uuid);
    this.history.set(job.uuid, job.snapshot());
    while (this.history.size > this.historyLimit) {
      const oldest = this.history.keys().next().value as string;
      this.history.delete(oldest);
    }
  }

  activeJob(uuid: string): Job | undefined {
    return this.active.get(uuid);
  }

  activeJobs(): Job[] {
    return [...this.active.values()];
  }

  /** The current status of a known job, active or finished. */
  status(uuid: string): JobStatus | undefined {
    return this.active.get(uuid)?.snapshot() ?? this.history.get(uuid);
  }

  /** The status of the most recently started job, if any job has run. */
  latest(): JobStatus | undefined {
    return this.latestUuid === undefined ? undefined : this.status(this.latestUuid);
  }
}
