// The engine's public face: start, query, cancel and watch backup jobs.
// A request is validated completely (names, confinement, sources, format
// limits, locks) before anything is created; then the driver creates the
// archive, the job runs in the background and its status flows through the
// status hub. Nothing here knows about gRPC.
import type { Logger } from "pino";
import { v4 as uuidv4, validate as isUuid } from "uuid";
import { ArchiveLimitError } from "../drivers/driver.js";
import type { BackupDriver, BackupTarget } from "../drivers/driver.js";
import { DeviceLocks } from "./device-locks.js";
import { EngineError } from "./errors.js";
import { Job } from "./job.js";
import { describeError } from "./job-failure.js";
import { DEFAULT_HISTORY_LIMIT, JobRegistry } from "./job-registry.js";
import { runJob } from "./job-runner.js";
import type { JobOutcome } from "./job-runner.js";
import { PathPolicy } from "./path-policy.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import { closeSources, openSource } from "./source-device.js";
import type { SourceDevice } from "./source-device.js";
import { SpeedLimiter } from "./speed-limiter.js";
import { StatusHub } from "./status-hub.js";
import type { StatusSubscription } from "./status-hub.js";
import type { BackupSpec, EngineOptions, JobStatus } from "./types.js";
import { checkSpeedLimit, validateRequest } from "./validate-request.js";

export type { StatusSubscription } from "./status-hub.js";

export interface BackupEngineOptions extends EngineOptions {
  readonly drivers: readonly BackupDriver[];
  readonly logger: Logger;
  /** Finished jobs kept in memory for query (default 1000). */
  readonly historyLimit?: number;
}

const CANCELLED_BY_REQUEST = "cancelled by request";
const CANCELLED_BY_SHUTDOWN = "cancelled: the server is shutting down";

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

function internalError(message: string, cause: unknown): EngineError {
  const error = new EngineError("internal", REASON.INTERNAL, message);
  (error as { cause?: unknown }).cause = cause;
  return error;
}

export class BackupEngine {
  private readonly drivers: readonly BackupDriver[];
  private readonly logger: Logger;
  private readonly policy: PathPolicy;
  private readonly locks = new DeviceLocks();
  private readonly registry: JobRegistry;
  private readonly hub: StatusHub;
  private readonly limiters = new Map<string, SpeedLimiter>();
  /** start() calls in progress and jobs running, so that shutdown can wait for them. */
  private readonly starting = new Set<Promise<unknown>>();
  private readonly running = new Set<Promise<void>>();
  private closing = false;

  /** Throws when the backup dir or a source root does not exist. */
  constructor(options: BackupEngineOptions) {
    this.drivers = options.drivers;
    this.logger = options.logger;
    this.policy = new PathPolicy(options.backupDir, options.sourceRoots);
    this.registry = new JobRegistry(options.historyLimit ?? DEFAULT_HISTORY_LIMIT);
    this.hub = new StatusHub(options.progressIntervalMs);
  }

  /**
   * Validates everything, creates the job and starts it; resolves with its
   * first (ACTIVE) status. Throws EngineError.
   */
  async start(spec: BackupSpec): Promise<JobStatus> {
    this.ensureOpen();
    const attempt = this.startJob(spec);
    this.starting.add(attempt);
    try {
      return await attempt;
    } catch (error) {
      if (error instanceof EngineError) throw error;
      this.logger.error({ err: error }, "starting a backup failed unexpectedly");
      throw internalError(`internal error: ${describeError(error)}`, error);
    } finally {
      this.starting.delete(attempt);
    }
  }

  /**
   * Empty/undefined uuid: the most recently started job or undefined.
   * Unknown uuid: EngineError not-found JOB_NOT_FOUND. Malformed uuid:
   * invalid-argument UUID_INVALID.
   */
  query(uuid?: string): JobStatus | undefined {
    if (uuid === undefined || uuid === "") return this.registry.latest();
    const id = this.parseUuid(uuid);
    return this.registry.status(id) ?? this.throwNotFound(id);
  }

  /**
   * Cancels one job (or every active job); resolves with their statuses once
   * they are terminal (partial file removed). Finished job: returns its
   * status unchanged. Throws like query.
   */
  async cancel(uuid?: string): Promise<JobStatus[]> {
    if (uuid === undefined || uuid === "") {
      const jobs = this.registry.activeJobs();
      for (const job of jobs) job.requestCancel(CANCELLED_BY_REQUEST);
      return Promise.all(jobs.map((job) => job.whenFinished()));
    }
    const id = this.parseUuid(uuid);
    const job = this.registry.activeJob(id);
    if (job === undefined) return [this.registry.status(id) ?? this.throwNotFound(id)];
    job.requestCancel(CANCELLED_BY_REQUEST);
    return [await job.whenFinished()];
  }

  /**
   * A subscription: first the current status (for one job) or every active
   * job's status (empty uuid), then changes; ends after the terminal status
   * when a uuid was given; never ends for all-jobs until close() (or
   * shutdown). Throws like query.
   */
  watch(uuid?: string): StatusSubscription {
    if (uuid === undefined || uuid === "") {
      const active = this.registry.activeJobs().map((job) => job.snapshot());
      return this.hub.subscribe(undefined, active);
    }
    const id = this.parseUuid(uuid);
    const status = this.registry.status(id) ?? this.throwNotFound(id);
    return this.hub.subscribe(id, [status]);
  }

  /**
   * Changes the speed limit of an active job (bytes/s, 0 = unlimited) for
   * the rest of the job; takes effect at once, even mid-wait. A finished
   * job: failed-precondition JOB_NOT_ACTIVE. Throws like query.
   */
  setSpeedLimit(uuid: string, bytesPerSecond: number): JobStatus {
    checkSpeedLimit(bytesPerSecond);
    const id = this.parseUuid(uuid);
    const job = this.registry.activeJob(id);
    if (job === undefined) {
      const status = this.registry.status(id) ?? this.throwNotFound(id);
      throw new EngineError(
        "failed-precondition",
        REASON.JOB_NOT_ACTIVE,
        `uuid: job ${id} has already ended (${status.state})`,
        "uuid",
      );
    }
    job.setSpeedLimit(bytesPerSecond);
    this.limiters.get(id)?.setRate(bytesPerSecond);
    this.hub.publishProgress(id, () => job.snapshot());
    this.logger.info({ uuid: id, speedLimit: bytesPerSecond }, "backup speed limit changed");
    return job.snapshot();
  }

  /** Cancels active jobs, waits for them, closes every subscription. */
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
  }

  private async startJob(spec: BackupSpec): Promise<JobStatus> {
    const driver = validateRequest(spec, this.drivers);
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
      try {
        this.ensureOpen();
        this.registerContents(target, spec, sources);
      } catch (error) {
        await target.abort().catch((abortError: unknown) => {
          this.logger.warn({ uuid, err: abortError }, "removing an unused archive failed");
        });
        throw error;
      }
      const job = new Job({
        uuid,
        backupFile,
        format: driver.format,
        speedLimit: spec.speedLimit,
        devices: sources.map((source) => ({ name: source.name, size: source.size })),
      });
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
        devices: sources.map((source) => ({ name: source.name, size: source.size })),
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
      return await driver.open({ path: backupFile, uuid });
    } catch (error) {
      const field = "backup_file";
      const code = errnoOf(error);
      switch (code) {
        case "EEXIST":
          throw new EngineError(
            "already-exists",
            REASON.BACKUP_FILE_EXISTS,
            `${field}: ${backupFile} or its temporary file already exists`,
            field,
          );
        case "ENOENT":
        case "ENOTDIR":
          throw new EngineError(
            "failed-precondition",
            REASON.BACKUP_DIR_NOT_FOUND,
            `${field}: the directory of ${backupFile} does not exist`,
            field,
          );
        case "EACCES":
        case "EPERM":
        case "EROFS":
          throw new EngineError(
            "failed-precondition",
            REASON.BACKUP_DIR_NOT_WRITABLE,
            `${field}: cannot create ${backupFile} (${code})`,
            field,
          );
        default:
          throw new EngineError(
            "failed-precondition",
            REASON.BACKUP_FILE_CREATE_FAILED,
            `${field}: cannot create ${backupFile}: ${describeError(error)}`,
            field,
          );
      }
    }
  }

  /** Configs first, then the devices as dev_ids 1..N in request order. */
  private registerContents(target: BackupTarget, spec: BackupSpec, sources: readonly SourceDevice[]): void {
    for (const config of spec.configs) target.registerConfig(config.name, config.data);
    sources.forEach((source, index) => {
      const devId = target.registerDevice(source.name, source.size);
      if (devId !== index + 1) {
        throw new Error(`driver gave device ${source.name} dev_id ${devId}, expected ${index + 1}`);
      }
    });
  }

  private launch(job: Job, target: BackupTarget, sources: readonly SourceDevice[]): void {
    const limiter = new SpeedLimiter(job.speedLimit);
    this.registry.add(job);
    this.limiters.set(job.uuid, limiter);
    this.hub.publishState(job.snapshot());
    this.logger.info(
      {
        uuid: job.uuid,
        backupFile: job.backupFile,
        devices: sources.map((source) => ({ name: source.name, path: source.path, size: source.size })),
        totalBytes: job.totalBytes,
        speedLimit: job.speedLimit,
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

  /** Runs the job, then releases everything and publishes the terminal status. Never rejects. */
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
        onProgress: () => this.hub.publishProgress(job.uuid, snapshot),
      });
    } catch (error) {
      outcome = { state: "error", errorMessage: `internal error: ${describeError(error)}`, unexpected: error };
    }
    // Everything is released before the terminal status goes out, so that a
    // watcher may start the next backup of the same devices right away.
    await closeSources(sources);
    this.locks.release(job.uuid);
    this.limiters.delete(job.uuid);
    job.finish(outcome.state, outcome.errorMessage);
    this.registry.complete(job);
    try {
      this.hub.publishState(job.snapshot());
      this.logEnd(job.snapshot(), outcome);
    } finally {
      // cancel() and shutdown() wait on this, whatever happened above.
      job.settle();
    }
  }

  private logEnd(status: JobStatus, outcome: JobOutcome): void {
    const durationMs = (status.endTime?.getTime() ?? Date.now()) - status.startTime.getTime();
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

  private ensureOpen(): void {
    if (this.closing) {
      throw new EngineError("unavailable", REASON.ENGINE_SHUT_DOWN, "the server is shutting down; retry on another instance or after restart");
    }
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
