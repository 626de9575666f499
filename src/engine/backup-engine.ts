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
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Logger } from "pino";
import { v4 as uuidv4, validate as isUuid } from "uuid";
import { ArchiveLimitError } from "../drivers/driver.js";
import type { BackupDriver, BackupTarget } from "../drivers/driver.js";
import { InvalidPageTokenError, JobStore } from "../store/job-store.js";
import { StateDirLock } from "../store/state-dir-lock.js";
import { archiveDeviceSize } from "./archive-size.js";
import { BackoffRetry } from "./backoff-retry.js";
import type { RetryDelays } from "./backoff-retry.js";
import { DeviceLocks } from "./device-locks.js";
import { EngineError } from "./errors.js";
import { Job } from "./job.js";
import type { JobContext } from "./job.js";
import { describeError } from "./job-failure.js";
import type { JobEntry } from "./job-record.js";
import { JobRegistry } from "./job-registry.js";
import { runJob } from "./job-runner.js";
import type { JobOutcome } from "./job-runner.js";
import { resolveListQuery } from "./list-query.js";
import { archiveIdentity, FileKeptError, removeArchive, removePartialFileSync } from "./owned-files.js";
import type { FileOwner } from "./owned-files.js";
import { PathPolicy } from "./path-policy.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import { recoverInterruptedJobs } from "./recover-jobs.js";
import { requestFingerprint } from "./request-fingerprint.js";
import { RevisionCounter } from "./revision-counter.js";
import { closeSources, openSource } from "./source-device.js";
import type { SourceDevice } from "./source-device.js";
import { SpeedLimiter } from "./speed-limiter.js";
import { StatusHub } from "./status-hub.js";
import { storeRefusal } from "./store-refusal.js";
import { targetOpenError } from "./target-open-error.js";
import type { StatusSubscription } from "./status-hub.js";
import type {
  BackupSpec,
  DeleteOptions,
  EngineOptions,
  JobStatus,
  ListPage,
  ListQuery,
  WatchOptions,
} from "./types.js";
import { checkRequestId, checkSpeedLimit, validateRequest } from "./validate-request.js";

export type { StatusSubscription } from "./status-hub.js";
export { StoreVersionError } from "../store/job-store.js";
export { StateDirLockedError } from "../store/state-dir-lock.js";
export { INTERRUPTED_MESSAGE } from "./recover-jobs.js";

export interface BackupEngineOptions extends EngineOptions {
  readonly drivers: readonly BackupDriver[];
  readonly logger: Logger;
  /**
   * Wall clock in Unix milliseconds, for start, end and update times and
   * the 24-hour request-id window (default Date.now; tests move it).
   */
  readonly now?: () => number;
  /** Backoff of storing job ends the store refused (default STORE_RETRY_DELAYS). */
  readonly storeRetryDelayMs?: RetryDelays;
}

/** The job database's file name inside the state dir. */
export const JOB_STORE_FILE = "jobs.sqlite";
/** Held by the one engine that owns the state dir. */
export const STATE_DIR_LOCK_FILE = "server.lock";
/**
 * How soon and how often a refused job end is written again: soon, since a
 * full disk is often freed quickly, and at most every 5 s after that, cheap
 * for a store that stays broken.
 */
export const STORE_RETRY_DELAYS: RetryDelays = { first: 250, max: 5000 };
/** How long a request id keeps answering with the job it started. */
export const REQUEST_ID_TTL_MS = 24 * 60 * 60 * 1000;

const CANCELLED_BY_REQUEST = "cancelled by request";
const CANCELLED_BY_SHUTDOWN = "cancelled: the server is shutting down";

/** The idempotency key of a start and the canonical form of its request. */
interface RequestIdentity {
  readonly requestId: string;
  readonly requestFingerprint: string;
}

/**
 * AIP-155 makes a request id idempotent for the request it came with; the
 * same id with another request is a client bug, and answering with the
 * earlier job would claim the new request was accepted.
 */
function requestIdReused(requestId: string, uuid: string): EngineError {
  return new EngineError(
    "already-exists",
    REASON.REQUEST_ID_REUSED,
    `request_id: ${quote(requestId)} was used by job ${uuid} for a different request within the last 24 hours; ` +
      `send a new request_id for a new backup, or the original request unchanged to get that job`,
    "request_id",
    { uuid },
  );
}

function internalError(message: string, cause: unknown): EngineError {
  const error = new EngineError("internal", REASON.INTERNAL, message);
  (error as { cause?: unknown }).cause = cause;
  return error;
}

const monotonic = (): number => performance.now();

export class BackupEngine {
  private readonly drivers: readonly BackupDriver[];
  private readonly logger: Logger;
  private readonly policy: PathPolicy;
  private readonly now: () => number;
  private readonly locks = new DeviceLocks();
  /**
   * Partial archives a failed job could not remove (its filesystem went
   * read-only, say); retried before every new job, and only while the file
   * at that path is still the job's own. By path.
   */
  private readonly leftoverPartials = new Map<string, FileOwner>();
  private readonly store: JobStore;
  private readonly stateDirLock: StateDirLock;
  private readonly revisions: RevisionCounter;
  private readonly jobContext: JobContext;
  private readonly registry: JobRegistry;
  private readonly hub: StatusHub;
  private readonly limiters = new Map<string, SpeedLimiter>();
  /** Stores the job ends the store refused, in the background. */
  private readonly storeRetry: BackoffRetry;
  /** start() calls in progress and jobs running, so that shutdown can wait for them. */
  private readonly starting = new Set<Promise<unknown>>();
  private readonly running = new Set<Promise<void>>();
  /** Starts with a request id in progress (settled form), by request id. */
  private readonly requests = new Map<string, Promise<void>>();
  /** shutdown() began: no new jobs. */
  private closing = false;
  /** shutdown() finished: the store is closed. */
  private closed = false;

  /**
   * Opens the engine on `${stateDir}/jobs.sqlite` (creating the state dir
   * when missing): refuses a database of a newer schema (StoreVersionError),
   * recovers the jobs a dead process left active, then is ready.
   */
  static async open(options: BackupEngineOptions): Promise<BackupEngine> {
    await fs.mkdir(options.stateDir, { recursive: true });
    return new BackupEngine(options);
  }

  /**
   * Like open(), synchronously, with an existing state dir. Throws when the
   * backup dir or a source root does not exist, or as open() does.
   */
  constructor(options: BackupEngineOptions) {
    this.drivers = options.drivers;
    this.logger = options.logger;
    this.policy = new PathPolicy(options.backupDir, options.sourceRoots);
    this.now = options.now ?? Date.now;
    this.hub = new StatusHub(options.progressIntervalMs);
    const lock = StateDirLock.acquire(path.join(options.stateDir, STATE_DIR_LOCK_FILE));
    let store: JobStore;
    try {
      store = JobStore.open(path.join(options.stateDir, JOB_STORE_FILE));
    } catch (error) {
      lock.release();
      throw error;
    }
    try {
      this.revisions = new RevisionCounter(store, (error) => {
        this.logger.error({ err: error }, "reserving revisions in the job store failed");
      });
      this.jobContext = { now: this.now, monotonic, nextRevision: () => this.revisions.next() };
      this.registry = new JobRegistry(store, monotonic);
      recoverInterruptedJobs({
        store,
        backupDir: this.policy.backupDir,
        now: this.now,
        nextRevision: this.jobContext.nextRevision,
        logger: this.logger,
      });
    } catch (error) {
      store.close();
      lock.release();
      throw error;
    }
    this.store = store;
    this.stateDirLock = lock;
    this.storeRetry = new BackoffRetry(() => this.retryUnsaved(), options.storeRetryDelayMs ?? STORE_RETRY_DELAYS);
  }

  /**
   * Validates everything, creates the job and starts it; resolves with its
   * first (ACTIVE) status. With a request id used by a job started within
   * 24 hours, starts nothing and resolves with that job's current status.
   * Throws EngineError.
   */
  async start(spec: BackupSpec): Promise<JobStatus> {
    this.ensureOpen();
    const attempt = this.startOrReuse(spec);
    this.starting.add(attempt);
    try {
      return await attempt;
    } catch (error) {
      if (error instanceof EngineError) throw error;
      const refusal = storeRefusal(error, "cannot record a new job");
      if (refusal !== undefined) {
        this.logger.warn({ err: error }, "refused a backup: the job store failed");
        throw refusal;
      }
      this.logger.error({ err: error }, "starting a backup failed unexpectedly");
      throw internalError(`internal error: ${describeError(error)}`, error);
    } finally {
      this.starting.delete(attempt);
    }
  }

  /**
   * Empty/undefined uuid: the most recently started job or undefined.
   * Unknown uuid: EngineError not-found JOB_NOT_FOUND. Malformed uuid:
   * invalid-argument UUID_INVALID. History comes from the store.
   */
  query(uuid?: string): JobStatus | undefined {
    this.ensureStoreOpen();
    return this.usingStore("cannot read the job history", () => {
      if (uuid === undefined || uuid === "") return this.registry.latest();
      const id = this.parseUuid(uuid);
      return this.registry.status(id) ?? this.throwNotFound(id);
    });
  }

  /**
   * A page of jobs, newest first, active ones with live counters. Pages
   * stay stable while jobs are added. Throws EngineError invalid-argument
   * (PAGE_SIZE_INVALID, PAGE_TOKEN_INVALID, JOB_STATE_INVALID).
   */
  list(query: ListQuery): ListPage {
    this.ensureStoreOpen();
    const { pageSize, pageToken, states } = resolveListQuery(query);
    try {
      return this.usingStore("cannot read the job history", () => this.registry.list(pageSize, pageToken, states));
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
    this.ensureStoreOpen();
    if (uuid === undefined || uuid === "") {
      const jobs = this.registry.activeJobs();
      for (const job of jobs) job.requestCancel(CANCELLED_BY_REQUEST);
      return Promise.all(jobs.map((job) => job.whenFinished()));
    }
    const id = this.parseUuid(uuid);
    const job = this.registry.activeJob(id);
    if (job === undefined) {
      return [this.usingStore("cannot read the job history", () => this.registry.status(id) ?? this.throwNotFound(id))];
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
    this.ensureStoreOpen();
    const id = this.parseUuid(uuid);
    if (this.registry.activeJob(id) !== undefined) {
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
    this.flushUnsavedOrRefuse(what);
    const entry = this.usingStore(what, () => this.registry.stored(id)) ?? this.throwNotFound(id);
    let archiveRemoved = false;
    if (options.deleteArchive) archiveRemoved = await this.removeArchiveOf(entry);
    this.ensureStoreOpen();
    this.usingStore(what, () => this.registry.remove(id));
    this.logger.info({ uuid: id, archiveRemoved }, "backup record deleted");
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
    this.ensureStoreOpen();
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
      const initial = this.usingStore("cannot read the job history", () =>
        after > 0 ? this.registry.changedAfter(after) : this.registry.activeJobs().map((job) => job.snapshot()),
      );
      return this.hub.subscribe(undefined, initial);
    }
    const id = this.parseUuid(uuid);
    const status = this.usingStore("cannot read the job history", () => this.registry.status(id)) ?? this.throwNotFound(id);
    if (after > 0 && status.revision <= after) {
      // Nothing new yet: an active job's next change will come; a finished job has none.
      return status.state === "active" ? this.hub.subscribe(id, []) : this.hub.endedSubscription();
    }
    return this.hub.subscribe(id, [status]);
  }

  /**
   * Changes the speed limit of an active job (bytes/s, 0 = unlimited) for
   * the rest of the job; takes effect at once, even mid-wait, and is stored
   * and published with a new revision. A finished job: failed-precondition
   * JOB_NOT_ACTIVE. Throws like query.
   */
  setSpeedLimit(uuid: string, bytesPerSecond: number): JobStatus {
    this.ensureStoreOpen();
    checkSpeedLimit(bytesPerSecond);
    const id = this.parseUuid(uuid);
    const job = this.registry.activeJob(id);
    if (job === undefined) {
      const status = this.usingStore("cannot read the job history", () => this.registry.status(id)) ?? this.throwNotFound(id);
      throw new EngineError(
        "failed-precondition",
        REASON.JOB_NOT_ACTIVE,
        `uuid: job ${id} has already ended (${status.state})`,
        "uuid",
      );
    }
    job.setSpeedLimit(bytesPerSecond);
    this.limiters.get(id)?.setRate(bytesPerSecond);
    const status = job.snapshot();
    try {
      this.registry.save(job);
    } catch (error) {
      // The new limit holds anyway; the next progress write stores it.
      this.logger.error({ uuid: id, err: error }, "storing a speed change failed");
    }
    this.hub.publishNow(status);
    this.logger.info({ uuid: id, speedLimit: bytesPerSecond }, "backup speed limit changed");
    return status;
  }

  /** Cancels active jobs, waits for them, closes every subscription, closes the store. */
  async shutdown(): Promise<void> {
    this.closing = true;
    // A start() that is creating its archive either registers its job
    // before this point or sees `closing` and removes the archive.
    await Promise.allSettled([...this.starting]);
    const jobs = this.registry.activeJobs();
    for (const job of jobs) job.requestCancel(CANCELLED_BY_SHUTDOWN);
    await Promise.all(jobs.map((job) => job.whenFinished()));
    await Promise.all([...this.running]);
    this.hub.endAll();
    this.storeRetry.stop();
    if (!this.closed) {
      this.closed = true;
      this.storeUnsavedBeforeClose();
      this.store.close();
      this.stateDirLock.release();
    }
  }

  /** Answers a retried request id with its job; otherwise starts a new job. */
  private async startOrReuse(spec: BackupSpec): Promise<JobStatus> {
    checkRequestId(spec.requestId);
    const requestId = spec.requestId === "" ? undefined : spec.requestId;
    if (requestId === undefined) return this.startJob(spec, undefined);
    // Starts with one request id run one after another, so that two retries
    // racing each other start one job (a refused start is not remembered:
    // the next one tries for itself).
    for (let pending = this.requests.get(requestId); pending !== undefined; pending = this.requests.get(requestId)) {
      await pending;
    }
    this.ensureOpen();
    const fingerprint = requestFingerprint(spec);
    const earlier = this.registry.findByRequestId(requestId, this.now() - REQUEST_ID_TTL_MS);
    if (earlier !== undefined) {
      // A job stored without a fingerprint (by an older version) cannot tell: it counts as the same request.
      if (earlier.requestFingerprint !== undefined && earlier.requestFingerprint !== fingerprint) {
        throw requestIdReused(requestId, earlier.status.uuid);
      }
      return earlier.status;
    }
    const attempt = this.startJob(spec, { requestId, requestFingerprint: fingerprint });
    const settled = attempt.then(
      () => undefined,
      () => undefined,
    );
    this.requests.set(requestId, settled);
    try {
      return await attempt;
    } finally {
      if (this.requests.get(requestId) === settled) this.requests.delete(requestId);
    }
  }

  private async startJob(spec: BackupSpec, request: RequestIdentity | undefined): Promise<JobStatus> {
    this.retryLeftoverPartials();
    const driver = validateRequest(spec, this.drivers);
    // A store that cannot take the ends of earlier jobs cannot record this
    // one: refused before any source or archive is opened.
    this.flushUnsavedOrRefuse("cannot record a new job");
    const backupFile = await this.policy.resolveBackupFile(spec.backupFile);
    const sources = await this.openSources(spec);
    const uuid = uuidv4();
    let locked = false;
    try {
      this.checkDistinctSources(spec, sources);
      this.checkPlan(driver, spec, sources);
      this.ensureOpen();
      this.locks.acquire({
        owner: uuid,
        archivePath: backupFile,
        devices: sources.map((source, index) => ({
          key: source.lockKey,
          field: `devices[${index}].path`,
          path: spec.devices[index]?.path ?? source.path,
        })),
      });
      locked = true;
      const target = await this.openTarget(driver, backupFile, uuid);
      let job: Job;
      try {
        this.ensureOpen();
        this.registerContents(target, spec, sources);
        job = new Job(
          {
            uuid,
            backupFile,
            partialPath: target.partialPath,
            partialFile: target.partialFile,
            format: driver.format,
            speedLimit: spec.speedLimit,
            ...request,
            devices: sources.map((source) => ({ name: source.name, size: source.size })),
          },
          this.jobContext,
        );
        // Stored before it is announced: from here on a crash leaves a
        // record that recovery finishes (and whose partial file it removes).
        this.registry.add(job);
      } catch (error) {
        await target.abort().catch((abortError: unknown) => {
          this.logger.warn({ uuid, err: abortError }, "removing an unused archive failed");
        });
        throw error;
      }
      this.launch(job, target, sources);
      return job.snapshot();
    } catch (error) {
      if (locked) this.locks.release(uuid);
      await closeSources(sources);
      throw error;
    }
  }

  /** Opens every source in request order; on failure closes those already open. */
  private async openSources(spec: BackupSpec): Promise<SourceDevice[]> {
    const sources: SourceDevice[] = [];
    try {
      for (const [index, device] of spec.devices.entries()) {
        sources.push(await openSource(this.policy, device, index));
      }
      return sources;
    } catch (error) {
      await closeSources(sources);
      throw error;
    }
  }

  private checkDistinctSources(spec: BackupSpec, sources: readonly SourceDevice[]): void {
    const seen = new Map<string, number>();
    sources.forEach((source, index) => {
      const earlier = seen.get(source.lockKey);
      if (earlier !== undefined) {
        const field = `devices[${index}].path`;
        throw new EngineError(
          "invalid-argument",
          REASON.DEVICE_SOURCE_DUPLICATE,
          `${field}: ${quote(spec.devices[index]?.path ?? "")} is the same source as devices[${earlier}].path`,
          field,
        );
      }
      seen.set(source.lockKey, index);
    });
  }

  /** Asks the driver whether its format can hold this archive. */
  private checkPlan(driver: BackupDriver, spec: BackupSpec, sources: readonly SourceDevice[]): void {
    try {
      driver.checkPlan({
        configs: spec.configs.map((config) => ({ name: config.name, size: config.data.byteLength })),
        devices: sources.map((source) => ({ name: source.name, size: archiveDeviceSize(source.size) })),
      });
    } catch (error) {
      if (error instanceof ArchiveLimitError) {
        throw new EngineError(
          "invalid-argument",
          REASON.ARCHIVE_LIMIT_EXCEEDED,
          `${error.field}: ${error.message}`,
          error.field,
        );
      }
      throw error;
    }
  }

  private async openTarget(driver: BackupDriver, backupFile: string, uuid: string): Promise<BackupTarget> {
    try {
      return await driver.open({ path: backupFile, uuid, confineTo: this.policy.backupDir });
    } catch (error) {
      throw targetOpenError(error, backupFile);
    }
  }

  /**
   * Configs first, then the devices as dev_ids 1..N in request order, each
   * with its size rounded up to 512 (the reader pads the tail with zeros).
   */
  private registerContents(target: BackupTarget, spec: BackupSpec, sources: readonly SourceDevice[]): void {
    for (const config of spec.configs) target.registerConfig(config.name, config.data);
    sources.forEach((source, index) => {
      const devId = target.registerDevice(source.name, archiveDeviceSize(source.size));
      if (devId !== index + 1) {
        throw new Error(`driver gave device ${source.name} dev_id ${devId}, expected ${index + 1}`);
      }
    });
  }

  private launch(job: Job, target: BackupTarget, sources: readonly SourceDevice[]): void {
    const limiter = new SpeedLimiter(job.speedLimit);
    this.limiters.set(job.uuid, limiter);
    this.hub.publishState(job.snapshot());
    this.logger.info(
      {
        uuid: job.uuid,
        backupFile: job.backupFile,
        devices: sources.map((source) => ({ name: source.name, path: source.path, size: source.size })),
        totalBytes: job.totalBytes,
        speedLimit: job.speedLimit,
        ...(job.requestId === undefined ? {} : { requestId: job.requestId }),
      },
      "backup started",
    );
    const run = this.runToEnd(job, target, sources, limiter).catch((error: unknown) => {
      // runToEnd handles every failure of the job itself; this is a bug.
      this.logger.error({ uuid: job.uuid, err: error }, "finishing a backup failed unexpectedly");
    });
    this.running.add(run);
    void run.then(() => this.running.delete(run));
  }

  /** Runs the job, then releases everything, stores and publishes the terminal status. Never rejects. */
  private async runToEnd(
    job: Job,
    target: BackupTarget,
    sources: readonly SourceDevice[],
    limiter: SpeedLimiter,
  ): Promise<void> {
    const snapshot = (): JobStatus => job.snapshot();
    let outcome: JobOutcome;
    try {
      outcome = await runJob({
        job,
        target,
        sources,
        limiter,
        onProgress: () => {
          this.saveProgress(job);
          this.hub.publishProgress(job.uuid, snapshot);
        },
      });
    } catch (error) {
      outcome = { state: "error", errorMessage: `internal error: ${describeError(error)}`, unexpected: error };
    }
    // Everything is released before the terminal status goes out, so that a
    // watcher may start the next backup of the same devices right away.
    await closeSources(sources);
    this.locks.release(job.uuid);
    this.limiters.delete(job.uuid);
    if (outcome.state === "done") await this.recordArchive(job);
    if (outcome.cleanupError !== undefined) {
      this.leftoverPartials.set(job.partialPath, { file: job.partialFile, uuid: job.uuid });
    }
    job.finish(outcome.state, outcome.errorMessage);
    try {
      this.registry.complete(job);
    } catch (error) {
      // The registry keeps the end in memory and shows it; it is stored later.
      this.logger.error(
        { uuid: job.uuid, state: job.state, err: error },
        "storing the end of a backup failed; it is kept in memory and stored again in the background",
      );
      this.storeRetry.schedule();
    }
    try {
      this.hub.publishState(job.snapshot());
      this.logEnd(job.snapshot(), outcome);
    } finally {
      // cancel() and shutdown() wait on this, whatever happened above.
      job.settle();
    }
  }

  /** Progress goes to the store at most once a second; a failure must not stop the job. */
  private saveProgress(job: Job): void {
    try {
      this.registry.saveProgress(job);
    } catch (error) {
      this.logger.warn({ uuid: job.uuid, err: error }, "storing backup progress failed");
    }
  }

  /** Notes who the committed archive is, so that deleting the job later removes only that file. */
  private async recordArchive(job: Job): Promise<void> {
    try {
      job.recordArchive(await archiveIdentity(job.backupFile));
    } catch (error) {
      this.logger.warn({ uuid: job.uuid, err: error }, "reading the committed archive's identity failed");
    }
  }

  /** Removes a done job's archive for delete(); returns whether a file was removed. */
  private async removeArchiveOf(entry: JobEntry): Promise<boolean> {
    const { status, extras } = entry;
    // Only a job that ended done committed an archive; any file at the path
    // of another job belongs to someone else.
    if (status.state !== "done") return false;
    const field = "delete_archive";
    const kept = (message: string): EngineError =>
      new EngineError("failed-precondition", REASON.ARCHIVE_REPLACED, `${field}: ${message}; nothing was deleted`, field);
    if (extras.archive === undefined) throw kept(`the identity of ${status.backupFile} was not recorded`);
    try {
      return (await removeArchive(this.policy.backupDir, status.backupFile, extras.archive)) === "removed";
    } catch (error) {
      if (error instanceof FileKeptError) {
        if (error.why === "outside-backup-dir") {
          throw new EngineError(
            "permission-denied",
            REASON.PATH_NOT_ALLOWED,
            `${field}: ${error.message}; nothing was deleted`,
            field,
          );
        }
        throw kept(error.message);
      }
      throw new EngineError(
        "failed-precondition",
        REASON.ARCHIVE_REMOVE_FAILED,
        `${field}: cannot remove ${status.backupFile}: ${describeError(error)}; the record was kept`,
        field,
      );
    }
  }

  private retryLeftoverPartials(): void {
    for (const [partialPath, owner] of this.leftoverPartials) {
      try {
        removePartialFileSync(this.policy.backupDir, partialPath, owner);
        this.leftoverPartials.delete(partialPath);
        this.logger.info({ partialPath }, "removed a partial archive left by a failed job");
      } catch (error) {
        if (error instanceof FileKeptError) this.leftoverPartials.delete(partialPath);
        // Otherwise (still read-only, say) try again before the next job.
      }
    }
  }

  /** One background try at storing the unsaved job ends; true when none is left. */
  private retryUnsaved(): boolean {
    if (this.closed || this.registry.unsavedCount === 0) return true;
    const jobs = this.registry.unsavedJobs();
    try {
      this.registry.flushUnsaved();
    } catch (error) {
      this.logger.warn({ unsaved: this.registry.unsavedCount, err: error }, "storing backup ends still fails; retrying");
      return false;
    }
    this.logger.info({ jobs }, "stored backup ends the job store had refused");
    return true;
  }

  /** Stores the unsaved job ends now, or refuses (RESOURCE_EXHAUSTED, UNAVAILABLE) what needs the store. */
  private flushUnsavedOrRefuse(what: string): void {
    if (this.registry.unsavedCount === 0) return;
    const jobs = this.registry.unsavedJobs();
    this.usingStore(what, () => this.registry.flushUnsaved());
    this.storeRetry.stop();
    this.logger.info({ jobs }, "stored backup ends the job store had refused");
  }

  /** The last chance for unsaved job ends: after a restart they would read "interrupted". */
  private storeUnsavedBeforeClose(): void {
    if (this.registry.unsavedCount === 0) return;
    const jobs = this.registry.unsavedJobs();
    try {
      this.registry.flushUnsaved();
      this.logger.info({ jobs }, "stored backup ends the job store had refused");
    } catch (error) {
      this.logger.error(
        { jobs: this.registry.unsavedJobs(), err: error },
        "the job store still refuses these backup ends; after a restart they will read as interrupted",
      );
    }
  }

  /** Runs `action`, answering a failing store as a refusal (see store-refusal.ts) instead of as an internal error. */
  private usingStore<T>(what: string, action: () => T): T {
    try {
      return action();
    } catch (error) {
      throw storeRefusal(error, what) ?? error;
    }
  }

  private logEnd(status: JobStatus, outcome: JobOutcome): void {
    const durationMs = (status.endTime?.getTime() ?? this.now()) - status.startTime.getTime();
    const fields = {
      uuid: status.uuid,
      state: status.state,
      transferredBytes: status.transferredBytes,
      zeroBytes: status.zeroBytes,
      durationMs,
      bytesPerSecond: durationMs > 0 ? Math.round((status.transferredBytes * 1000) / durationMs) : 0,
      error: status.errorMessage === "" ? undefined : status.errorMessage,
    };
    if (outcome.unexpected !== undefined) {
      this.logger.error({ uuid: status.uuid, err: outcome.unexpected }, "backup failed unexpectedly");
    }
    if (outcome.cleanupError !== undefined) {
      this.logger.error({ uuid: status.uuid, err: outcome.cleanupError }, "removing the partial archive failed");
    }
    if (status.state === "error") this.logger.warn(fields, "backup finished");
    else this.logger.info(fields, "backup finished");
  }

  /** No new jobs once shutdown began. */
  private ensureOpen(): void {
    if (this.closing) {
      throw new EngineError("unavailable", REASON.ENGINE_SHUT_DOWN, "the server is shutting down; retry on another instance or after restart");
    }
  }

  /** Nothing at all once shutdown finished (the store is closed). */
  private ensureStoreOpen(): void {
    if (this.closed) {
      throw new EngineError("unavailable", REASON.ENGINE_SHUT_DOWN, "the server has shut down; retry after restart");
    }
  }

  /**
   * A revision above the latest one handed out cannot be resumed after:
   * waiting for it would stay silent (or end without a terminal status)
   * through changes the watcher has never seen.
   */
  private checkRevisionKnown(after: number): void {
    const latest = this.revisions.current;
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

  private parseUuid(uuid: string): string {
    if (!isUuid(uuid)) {
      throw new EngineError("invalid-argument", REASON.UUID_INVALID, `uuid: ${quote(uuid)} is not a uuid`, "uuid");
    }
    return uuid.toLowerCase();
  }

  private throwNotFound(uuid: string): never {
    throw new EngineError("not-found", REASON.JOB_NOT_FOUND, `uuid: no job ${uuid}`, "uuid");
  }
}
