// Every job the engine knows: active ones as live Job objects, all of them
// (active and finished, across restarts) in the job store. Reads prefer the
// live job, so active jobs always show their current counters. Writes go to
// the store synchronously, so a status is stored before anyone is told.
//
// When the store refuses a job's final status (its disk is full), the
// finished job stays here, unsaved, until flushUnsaved() stores it: until
// then the store still says "active", and every read shows the job's real
// final status from memory instead.
import type { JobStore } from "../store/job-store.js";
import type { Job } from "./job.js";
import { fromStoredJob, toStoredJob } from "./job-record.js";
import type { JobEntry, JobExtras } from "./job-record.js";
import type { JobState, JobStatus, ListPage } from "./types.js";

/** An active job's progress is written at most this often. */
export const PROGRESS_SAVE_INTERVAL_MS = 1000;

export class JobRegistry {
  private readonly store: JobStore;
  private readonly monotonic: () => number;
  private readonly active = new Map<string, Job>();
  /** Finished jobs whose final status the store refused, in the order they ended. */
  private readonly unsaved = new Map<string, Job>();
  /** When each active job was last written (monotonic ms). */
  private readonly savedAt = new Map<string, number>();

  constructor(store: JobStore, monotonic: () => number) {
    this.store = store;
    this.monotonic = monotonic;
  }

  /** Stores a job that just started (throws when the store fails), then tracks it. */
  add(job: Job): void {
    this.write(job);
    this.savedAt.set(job.uuid, this.monotonic());
    this.active.set(job.uuid, job);
  }

  /** Stores an active job's current status now (a speed change). */
  save(job: Job): void {
    this.write(job);
    this.savedAt.set(job.uuid, this.monotonic());
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

  /**
   * Stores a job's terminal status and stops tracking it as active. When the
   * store fails, throws and keeps the job as unsaved (see flushUnsaved).
   */
  complete(job: Job): void {
    try {
      this.write(job);
    } catch (error) {
      this.unsaved.set(job.uuid, job);
      throw error;
    } finally {
      this.active.delete(job.uuid);
      this.savedAt.delete(job.uuid);
    }
  }

  /** Finished jobs whose final status is only in memory. */
  get unsavedCount(): number {
    return this.unsaved.size;
  }

  /** The uuid and state of each unsaved job, for the log. */
  unsavedJobs(): Array<{ uuid: string; state: string }> {
    return [...this.unsaved.values()].map((job) => ({ uuid: job.uuid, state: job.state }));
  }

  /**
   * Stores the final status of every unsaved job, oldest first. Throws at the first failure (the rest stay unsaved).
   */
  flushUnsaved(): void {
    for (const job of [...this.unsaved.values()]) {
      this.write(job);
      this.unsaved.delete(job.uuid);
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
    const live = this.live(uuid);
    if (live !== undefined) return live.snapshot();
    const stored = this.store.get(uuid);
    return stored && fromStoredJob(stored).status;
  }

  /** A finished (or not live) job's status with its extras, as stored or as it will be. */
  stored(uuid: string): JobEntry | undefined {
    const unsaved = this.unsaved.get(uuid);
    if (unsaved !== undefined) return { status: unsaved.snapshot(), extras: extrasOf(unsaved) };
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

  /**
   * A page of jobs, newest first. Throws InvalidPageTokenError. While jobs
   * are unsaved (stored as active, really finished), a page filtered by
   * state may hold fewer than pageSize jobs.
   */
  list(pageSize: number, pageToken: string | undefined, states: readonly JobState[]): ListPage {
    const filtering = states.length > 0 && this.unsaved.size > 0;
    const asked = filtering && !states.includes("active") ? [...states, "active"] : states;
    const page = this.store.list({ pageSize, pageToken, states: asked });
    let statuses = page.jobs.map((stored) => this.current(fromStoredJob(stored).status));
    if (filtering) statuses = statuses.filter((status) => states.includes(status.state));
    return {
      statuses,
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
      .filter((stored) => this.live(stored.uuid) === undefined)
      .map((stored) => fromStoredJob(stored).status);
    const live = [...this.active.values(), ...this.unsaved.values()]
      .map((job) => job.snapshot())
      .filter((status) => status.revision > revision);
    return [...finished, ...live].sort((a, b) => a.revision - b.revision);
  }

  /** Forgets a job's record (an unsaved one too); returns whether it existed. */
  remove(uuid: string): boolean {
    const stored = this.store.delete(uuid);
    return this.unsaved.delete(uuid) || stored;
  }

  /** A job whose status the store may not show truly: active, or finished and unsaved. */
  private live(uuid: string): Job | undefined {
    return this.active.get(uuid) ?? this.unsaved.get(uuid);
  }

  /** A stored status, replaced by the live one while the job runs (or its end is unsaved). */
  private current(status: JobStatus): JobStatus {
    return this.live(status.uuid)?.snapshot() ?? status;
  }

  private write(job: Job): void {
    this.store.save(toStoredJob(job.snapshot(), extrasOf(job)));
  }
}

/** What a job's record keeps besides its status. */
function extrasOf(job: Job): JobExtras {
  return {
    target: job.target,
    pending: job.pending,
    ...(job.archive === undefined ? {} : { archive: job.archive }),
    ...(job.requestFingerprint === undefined ? {} : { requestFingerprint: job.requestFingerprint }),
    sources: job.sources,
  };
}
