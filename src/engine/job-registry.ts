// Every job the engine knows: active ones as live Job objects, all of them
// (active and finished, across restarts) in the job store. Reads prefer the
// live job, so active jobs always show their current counters. Writes go to
// the store synchronously, so a status is stored before anyone is told.
import type { JobStore } from "../store/job-store.js";
import type { Job } from "./job.js";
import { fromStoredJob, toStoredJob } from "./job-record.js";
import type { JobEntry } from "./job-record.js";
import type { JobState, JobStatus, ListPage } from "./types.js";

/** An active job's progress is written at most this often. */
export const PROGRESS_SAVE_INTERVAL_MS = 1000;

export class JobRegistry {
  private readonly store: JobStore;
  private readonly monotonic: () => number;
  private readonly active = new Map<string, Job>();
  /** When each active job was last written (monotonic ms). */
  private readonly savedAt = new Map<string, number>();

  constructor(store: JobStore, monotonic: () => number) {
    this.store = store;
    this.monotonic = monotonic;
  }

  /** Stores a job that just started (throws when the store fails), then tracks it. */
  add(job: Job): void {
    this.write(job);
    this.active.set(job.uuid, job);
  }

  /** Stores an active job's current status now (a speed change). */
  save(job: Job): void {
    this.write(job);
  }

  /** Stores an active job's progress, unless it was written less than a second ago. */
  saveProgress(job: Job): void {
    const now = this.monotonic();
    const last = this.savedAt.get(job.uuid);
    if (last !== undefined && now - last < PROGRESS_SAVE_INTERVAL_MS) return;
    // Noted first, so that a failing store is retried once a second, not per chunk.
    this.savedAt.set(job.uuid, now);
    this.write(job);
  }

  /** Stores a job's terminal status and stops tracking it (also when the store fails). */
  complete(job: Job): void {
    try {
      this.write(job);
    } finally {
      this.active.delete(job.uuid);
      this.savedAt.delete(job.uuid);
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
    const live = this.active.get(uuid);
    if (live !== undefined) return live.snapshot();
    const stored = this.store.get(uuid);
    return stored && fromStoredJob(stored).status;
  }

  /** A finished (or not live) job's stored status with its extras. */
  stored(uuid: string): JobEntry | undefined {
    const stored = this.store.get(uuid);
    return stored && fromStoredJob(stored);
  }

  /** The status of the most recently started job, if any job has run. */
  latest(): JobStatus | undefined {
    const stored = this.store.latest();
    return stored && this.current(fromStoredJob(stored).status);
  }

  /**
   * The newest job started with `requestId` at or after `since` (Unix ms):
   * its current status, and the fingerprint of the request that started it
   * (undefined for jobs stored before fingerprints were kept).
   */
  findByRequestId(
    requestId: string,
    since: number,
  ): { status: JobStatus; requestFingerprint: string | undefined } | undefined {
    const stored = this.store.findByRequestId(requestId, since);
    if (stored === undefined) return undefined;
    const entry = fromStoredJob(stored);
    return { status: this.current(entry.status), requestFingerprint: entry.extras.requestFingerprint };
  }

  /** A page of jobs, newest first. Throws InvalidPageTokenError. */
  list(pageSize: number, pageToken: string | undefined, states: readonly JobState[]): ListPage {
    const page = this.store.list({ pageSize, pageToken, states });
    return {
      statuses: page.jobs.map((stored) => this.current(fromStoredJob(stored).status)),
      ...(page.nextPageToken === undefined ? {} : { nextPageToken: page.nextPageToken }),
    };
  }

  /**
   * The current status of every job that changed after `revision`, lowest
   * revision first. Active jobs count with their live status (their
   * progress may be newer than what was stored).
   */
  changedAfter(revision: number): JobStatus[] {
    const finished = this.store
      .changedAfter(revision)
      .filter((stored) => !this.active.has(stored.uuid))
      .map((stored) => fromStoredJob(stored).status);
    const live = this.activeJobs()
      .map((job) => job.snapshot())
      .filter((status) => status.revision > revision);
    return [...finished, ...live].sort((a, b) => a.revision - b.revision);
  }

  /** Forgets a job's record; returns whether it existed. */
  remove(uuid: string): boolean {
    return this.store.delete(uuid);
  }

  /** A stored status, replaced by the live one while the job runs. */
  private current(status: JobStatus): JobStatus {
    return this.active.get(status.uuid)?.snapshot() ?? status;
  }

  private write(job: Job): void {
    const status = job.snapshot();
    this.store.save(
      toStoredJob(status, {
        partialPath: job.partialPath,
        ...(job.archive === undefined ? {} : { archive: job.archive }),
        ...(job.requestFingerprint === undefined ? {} : { requestFingerprint: job.requestFingerprint }),
      }),
    );
    this.savedAt.set(job.uuid, this.monotonic());
  }
}
