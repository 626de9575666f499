// The engine's public face: start, query, list, cancel, delete, watch and
// re-limit backup jobs. A request is validated completely (names,
// confinement, sources, format limits, locks) before anything is created;
// then the driver creates the archive, the job is stored, runs in the
// background and its status flows through the status hub. Every job's
// status lives in the job store (state changes are written before they are
// announced, progress at most once a second), so history survives restarts
// and jobs a dead process left active are recovered at startup. When the
// store refuses a job's final status (its disk is full), the engine keeps
// it in memory, shows it from there, stores it in the background once it
// can (and at shutdown), and refuses what needs the store meanwhile with
// RESOURCE_EXHAUSTED or UNAVAILABLE. Nothing here knows about gRPC.
//
// A thin facade: the parts live in engine-wiring.ts (construction),
// engine-state.ts (shared state and guards), request-dedup.ts,
// start-pipeline.ts, run-lifecycle.ts, unsaved-ends.ts and
// archive-deletion.ts.
import { recoverSourceLeftovers } from "./source-openers.js";
import { InvalidPageTokenError } from "../store/job-store.js";
import { removeArchiveOf } from "./archive-deletion.js";
import type { EngineState } from "./engine-state.js";
import { prepareStateDir, recoverThroughStores, wireEngine } from "./engine-wiring.js";
import type { BackupEngineOptions } from "./engine-wiring.js";
import { EngineError } from "./errors.js";
import { describeError } from "./job-failure.js";
import { resolveListQuery } from "./list-query.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import { startOrReuse } from "./request-dedup.js";
import { startJob } from "./start-pipeline.js";
import type { StatusSubscription } from "./status-hub.js";
import { storeRefusal } from "./store-refusal.js";
import type { BackupSpec, DeleteOptions, JobStatus, ListPage, ListQuery, WatchOptions } from "./types.js";
import { flushUnsavedOrRefuse, storeUnsavedBeforeClose } from "./unsaved-ends.js";
import { checkSpeedLimit } from "./validate-request.js";

export type { StatusSubscription } from "./status-hub.js";
export { StoreVersionError } from "../store/job-store.js";
export { StateDirLockedError } from "../store/state-dir-lock.js";
export { INTERRUPTED_MESSAGE } from "./recover-jobs.js";
export type { BackupEngineOptions } from "./engine-wiring.js";
export { JOB_STORE_FILE, STATE_DIR_LOCK_FILE, STORE_RETRY_DELAYS } from "./engine-wiring.js";
export { REQUEST_ID_TTL_MS } from "./request-dedup.js";

const CANCELLED_BY_REQUEST = "cancelled by request";
const CANCELLED_BY_SHUTDOWN = "cancelled: the server is shutting down";

function internalError(message: string, cause: unknown): EngineError {
  const error = new EngineError("internal", REASON.INTERNAL, message);
  (error as { cause?: unknown }).cause = cause;
  return error;
}

export class BackupEngine {
  private readonly state: EngineState;

  /**
   * Opens the engine on `${stateDir}/jobs.sqlite` (creating the state dir
   * when missing): refuses a database of a newer schema (StoreVersionError),
   * recovers the jobs a dead process left active, then is ready.
   */
  static async open(options: BackupEngineOptions): Promise<BackupEngine> {
    await prepareStateDir(options);
    const engine = new BackupEngine(options);
    try {
      // Jobs of S3 targets and compressed archives: their stores are asked (the constructor cannot await).
      await recoverThroughStores(engine.state);
    } catch (error) {
      await engine.shutdown();
      throw error;
    }
    // With the state dir locked: what a crashed server's sources left running.
    await recoverSourceLeftovers(options.stateDir, options.logger);
    return engine;
  }

  /**
   * Like open(), synchronously, with an existing state dir. Throws when the
   * backup dir or a source root does not exist, or as open() does.
   */
  constructor(options: BackupEngineOptions) {
    this.state = wireEngine(options);
  }

  /**
   * Validates everything, creates the job and starts it; resolves with its
   * first (ACTIVE) status. With a request id used by a job started within
   * 24 hours, starts nothing and resolves with that job's current status.
   * Throws EngineError.
   */
  async start(spec: BackupSpec): Promise<JobStatus> {
    this.state.ensureOpen();
    const attempt = startOrReuse(this.state, spec, (s, request) => startJob(this.state, s, request));
    this.state.starting.add(attempt);
    try {
      return await attempt;
    } catch (error) {
      if (error instanceof EngineError) throw error;
      const refusal = storeRefusal(error, "cannot record a new job");
      if (refusal !== undefined) {
        this.state.logger.warn({ err: error }, "refused a backup: the job store failed");
        throw refusal;
      }
      this.state.logger.error({ err: error }, "starting a backup failed unexpectedly");
      throw internalError(`internal error: ${describeError(error)}`, error);
    } finally {
      this.state.starting.delete(attempt);
    }
  }

  /**
   * Empty/undefined uuid: the most recently started job or undefined.
   * Unknown uuid: EngineError not-found JOB_NOT_FOUND. Malformed uuid:
   * invalid-argument UUID_INVALID. History comes from the store.
   */
  query(uuid?: string): JobStatus | undefined {
    this.state.ensureStoreOpen();
    return this.state.readHistory(() => {
      if (uuid === undefined || uuid === "") return this.state.registry.latest();
      const id = this.state.parseUuid(uuid);
      return this.state.registry.status(id) ?? this.state.throwNotFound(id);
    });
  }

  /**
   * A page of jobs, newest first, active ones with live counters. Pages
   * stay stable while jobs are added. Throws EngineError invalid-argument
   * (PAGE_SIZE_INVALID, PAGE_TOKEN_INVALID, JOB_STATE_INVALID).
   */
  list(query: ListQuery): ListPage {
    this.state.ensureStoreOpen();
    const { pageSize, pageToken, states } = resolveListQuery(query);
    try {
      return this.state.readHistory(() => this.state.registry.list(pageSize, pageToken, states));
    } catch (error) {
      if (error instanceof InvalidPageTokenError) {
        throw new EngineError(
          "invalid-argument",
          REASON.PAGE_TOKEN_INVALID,
          `page_token: ${quote(pageToken ?? "")} is not a token returned by an earlier page`,
          "page_token",
        );
      }
      throw error;
    }
  }

  /**
   * Cancels one job (or every active job); resolves with their statuses once
   * they are terminal (partial file removed). Finished job: returns its
   * status unchanged. Throws like query.
   */
  async cancel(uuid?: string): Promise<JobStatus[]> {
    this.state.ensureStoreOpen();
    if (uuid === undefined || uuid === "") {
      const jobs = this.state.registry.activeJobs();
      for (const job of jobs) job.requestCancel(CANCELLED_BY_REQUEST);
      return Promise.all(jobs.map((job) => job.whenFinished()));
    }
    const id = this.state.parseUuid(uuid);
    const job = this.state.registry.activeJob(id);
    if (job === undefined) {
      return [this.state.statusOf(id)];
    }
    job.requestCancel(CANCELLED_BY_REQUEST);
    return [await job.whenFinished()];
  }

  /**
   * Forgets a finished job: it is gone from query, list and watch
   * afterwards. With deleteArchive, first removes the archive a done job
   * committed, provided it is still that file and inside the backup dir
   * (a missing file is fine). Active job: failed-precondition JOB_ACTIVE.
   * Throws like query.
   */
  async delete(uuid: string, options: DeleteOptions): Promise<void> {
    this.state.ensureStoreOpen();
    const id = this.state.parseUuid(uuid);
    if (this.state.registry.activeJob(id) !== undefined) {
      throw new EngineError(
        "failed-precondition",
        REASON.JOB_ACTIVE,
        `uuid: job ${id} is still running; cancel it first`,
        "uuid",
      );
    }
    const what = "cannot delete the job's record";
    // Unsaved job ends first: a store that cannot take them cannot take this
    // either, and the archive must not go while the record stays.
    flushUnsavedOrRefuse(this.state, what);
    const entry = this.state.usingStore(what, () => this.state.registry.stored(id)) ?? this.state.throwNotFound(id);
    let archiveRemoved = false;
    if (options.deleteArchive) archiveRemoved = await removeArchiveOf(this.state.stores, entry);
    this.state.ensureStoreOpen();
    this.state.usingStore(what, () => this.state.registry.remove(id));
    this.state.logger.info({ uuid: id, archiveRemoved }, "backup record deleted");
  }

  /**
   * A subscription: first the current status (for one job) or every active
   * job's status (empty uuid), then changes; ends after the terminal status
   * when a uuid was given; never ends for all-jobs until close() (or
   * shutdown). With afterRevision > 0 it resumes instead: one job's current
   * status only when it is newer (a finished job that is not ends at once),
   * or every job that changed after it, lowest revision first. Throws like
   * query.
   */
  watch(uuid?: string, options: WatchOptions = {}): StatusSubscription {
    this.state.ensureStoreOpen();
    const after = options.afterRevision ?? 0;
    if (!(after >= 0)) {
      throw new EngineError(
        "invalid-argument",
        REASON.AFTER_REVISION_INVALID,
        `after_revision: ${after} is not a revision`,
        "after_revision",
      );
    }
    this.checkRevisionKnown(after);
    if (uuid === undefined || uuid === "") {
      const initial = this.state.readHistory(() =>
        after > 0
          ? this.state.registry.changedAfter(after)
          : this.state.registry.activeJobs().map((job) => job.snapshot()),
      );
      return this.state.hub.subscribe(undefined, initial);
    }
    const id = this.state.parseUuid(uuid);
    const status = this.state.statusOf(id);
    if (after > 0 && status.revision <= after) {
      // Nothing new yet: an active job's next change will come; a finished job has none.
      return status.state === "active" ? this.state.hub.subscribe(id, []) : this.state.hub.endedSubscription();
    }
    return this.state.hub.subscribe(id, [status]);
  }

  /**
   * Changes the speed limit of an active job (bytes/s, 0 = unlimited) for
   * the rest of the job; takes effect at once, even mid-wait, and is stored
   * and published with a new revision. A finished job: failed-precondition
   * JOB_NOT_ACTIVE. Throws like query.
   */
  setSpeedLimit(uuid: string, bytesPerSecond: number): JobStatus {
    this.state.ensureStoreOpen();
    checkSpeedLimit(bytesPerSecond);
    const id = this.state.parseUuid(uuid);
    const job = this.state.registry.activeJob(id);
    if (job === undefined) {
      const status = this.state.statusOf(id);
      throw new EngineError(
        "failed-precondition",
        REASON.JOB_NOT_ACTIVE,
        `uuid: job ${id} has already ended (${status.state})`,
        "uuid",
      );
    }
    job.setSpeedLimit(bytesPerSecond);
    this.state.limiters.get(id)?.setSpeedLimit(bytesPerSecond);
    const status = job.snapshot();
    try {
      this.state.registry.save(job);
    } catch (error) {
      // The new limit holds anyway; the next progress write stores it.
      this.state.logger.error({ uuid: id, err: error }, "storing a speed change failed");
    }
    this.state.hub.publishNow(status);
    this.state.logger.info({ uuid: id, speedLimit: bytesPerSecond }, "backup speed limit changed");
    return status;
  }

  /** Cancels active jobs, waits for them, closes every subscription, closes the store. */
  async shutdown(): Promise<void> {
    this.state.closing = true;
    // A start() that is creating its archive either registers its job
    // before this point or sees `closing` and removes the archive.
    await Promise.allSettled([...this.state.starting]);
    const jobs = this.state.registry.activeJobs();
    for (const job of jobs) job.requestCancel(CANCELLED_BY_SHUTDOWN);
    await Promise.all(jobs.map((job) => job.whenFinished()));
    await Promise.all([...this.state.running]);
    this.state.hub.endAll();
    this.state.storeRetry.stop();
    if (!this.state.closed) {
      this.state.closed = true;
      storeUnsavedBeforeClose(this.state);
      this.state.store.close();
      this.state.stateDirLock.release();
    }
  }

  /**
   * A revision above the latest one handed out cannot be resumed after:
   * waiting for it would stay silent (or end without a terminal status)
   * through changes the watcher has never seen.
   */
  private checkRevisionKnown(after: number): void {
    const latest = this.state.revisions.current;
    if (after <= latest) return;
    throw new EngineError(
      "out-of-range",
      REASON.AFTER_REVISION_OUT_OF_RANGE,
      `after_revision: ${after} was never handed out: this server's latest revision is ${latest} ` +
        `(was its state dir reset?); watch again with after_revision 0 for the current statuses`,
      "after_revision",
      { latest_revision: String(latest) },
    );
  }
}
