// Starting one backup, step by step: validate the request, open the
// sources, ask the driver whether its format can hold the plan, lock the
// devices and archive path, open the target, register configs and
// devices, store the job, then launch its run in the background. Each
// step undoes what the earlier ones took when a later one fails.
import { v4 as uuidv4 } from "uuid";
import { ArchiveLimitError } from "../drivers/driver.js";
import type { BackupDriver, BackupTarget } from "../drivers/driver.js";
import {
  ArchiveKeptError,
  ArchiveKeyError,
  type ArchiveStore,
  type ArchiveUpload,
  checkKey,
} from "../stores/archive-store.js";
import { type Compression, compressUpload } from "../stores/compressed-upload.js";
import { DEFAULT_TARGET } from "../stores/store-targets.js";
import { CommittedTarget } from "./committed-target.js";
import { archiveDeviceSize } from "./archive-size.js";
import { EngineError } from "./errors.js";
import type { EngineState } from "./engine-state.js";
import { Job } from "./job.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import type { RequestIdentity } from "./request-dedup.js";
import { runToEnd } from "./run-lifecycle.js";
import type { DiskSource } from "../sources/disk-source.js";
import { sourceField, sourceLocation } from "./device-source.js";
import { openJobSources } from "./job-sources.js";
import type { JobSources } from "./job-sources.js";
import { SpeedLimiter } from "./speed-limiter.js";
import { targetOpenError } from "./target-open-error.js";
import type { BackupSpec, DeviceSpec, JobStatus } from "./types.js";
import { flushUnsavedOrRefuse } from "./unsaved-ends.js";
import { checkSourcesAllowed, requestedCompression, validateRequest, withVzdumpName } from "./validate-request.js";
import { archiveKey } from "./recovery-routes.js";

/** Validates, creates, stores and launches a job; resolves with its first (ACTIVE) status. */
export async function startJob(
  state: EngineState,
  requested: BackupSpec,
  request: RequestIdentity | undefined,
): Promise<JobStatus> {
  await retryLeftoverPartials(state);
  const spec = withVzdumpName(requested, new Date(state.now()));
  const driver = validateRequest(spec, state.drivers);
  const targetName = spec.target ?? DEFAULT_TARGET;
  const store = chooseStore(state, targetName);
  checkSourcesAllowed(spec, state.sourceSettings);
  // A store that cannot take the ends of earlier jobs cannot record this
  // one: refused before any source or archive is opened.
  flushUnsavedOrRefuse(state, "cannot record a new job");
  const backupFile =
    targetName === DEFAULT_TARGET ? await state.policy.resolveBackupFile(spec.backupFile) : objectKey(spec.backupFile);
  const uuid = uuidv4();
  const opened = await openJobSources(state.openers, spec, uuid);
  const { sources } = opened;
  let locked = false;
  try {
    checkDistinctSources(spec, sources);
    checkPlan(driver, spec, sources);
    state.ensureOpen();
    state.locks.acquire({
      owner: uuid,
      archivePath: targetName === DEFAULT_TARGET ? backupFile : store.location(backupFile),
      devices: sources.map((source, index) => {
        const requested = (spec.devices[index] as DeviceSpec).source;
        return { key: source.lockKey, field: sourceField(requested, index), path: sourceLocation(requested) };
      }),
    });
    locked = true;
    const key = archiveKey(state.policy.backupDir, targetName, backupFile);
    const target = await openTarget(store, driver, { key, backupFile, uuid, compression: requestedCompression(spec) });
    let job: Job;
    try {
      state.ensureOpen();
      registerContents(target, spec, sources);
      job = new Job(
        {
          uuid,
          backupFile,
          target: targetName,
          pending: target.pending,
          archiveLocation: target.location,
          format: driver.format,
          speedLimit: spec.speedLimit,
          ...request,
          devices: sources.map((source, index) => {
            const device = spec.devices[index] as DeviceSpec;
            return {
              name: device.name,
              size: source.size,
              sourceKind: device.source.kind,
              source: sourceLocation(device.source),
            };
          }),
          sources: spec.devices.map((device) => device.source),
        },
        state.jobContext,
      );
      // Stored before it is announced: from here on a crash leaves a
      // record that recovery finishes (and whose partial file it removes).
      job.countWrittenBytes(() => target.bytesWritten);
      state.registry.add(job);
    } catch (error) {
      await target.abort().catch((abortError: unknown) => {
        state.logger.warn({ uuid, err: abortError }, "removing an unused archive failed");
      });
      throw error;
    }
    launch(state, job, target, opened);
    return job.snapshot();
  } catch (error) {
    if (locked) state.locks.release(uuid);
    await opened.close();
    throw error;
  }
}

/** Partial archives earlier jobs could not remove: tried again before each new job. */
async function retryLeftoverPartials(state: EngineState): Promise<void> {
  for (const [uuid, leftover] of state.leftoverPartials) {
    const store = state.stores.get(leftover.target);
    if (store === undefined) {
      state.leftoverPartials.delete(uuid);
      continue;
    }
    try {
      await store.discardLeftover(leftover.pending);
      state.leftoverPartials.delete(uuid);
      state.logger.info({ uuid, target: leftover.target }, "removed a partial archive left by a failed job");
    } catch (error) {
      // Someone else's object now has its name: not ours to remove, ever.
      if (error instanceof ArchiveKeptError) state.leftoverPartials.delete(uuid);
      // Otherwise (still read-only, say) try again before the next job.
    }
  }
}

function checkDistinctSources(spec: BackupSpec, sources: readonly DiskSource[]): void {
  const seen = new Map<string, number>();
  sources.forEach((source, index) => {
    const earlier = seen.get(source.lockKey);
    if (earlier !== undefined) {
      const requested = (spec.devices[index] as DeviceSpec).source;
      const field = sourceField(requested, index);
      const earlierField = sourceField((spec.devices[earlier] as DeviceSpec).source, earlier);
      throw new EngineError(
        "invalid-argument",
        REASON.DEVICE_SOURCE_DUPLICATE,
        `${field}: ${quote(sourceLocation(requested))} is the same source as ${earlierField}`,
        field,
      );
    }
    seen.set(source.lockKey, index);
  });
}

/** Asks the driver whether its format can hold this archive. */
function checkPlan(driver: BackupDriver, spec: BackupSpec, sources: readonly DiskSource[]): void {
  try {
    driver.checkPlan({
      configs: spec.configs.map((config) => ({ name: config.name, size: config.data.byteLength })),
      devices: sources.map((source, index) => ({
        name: (spec.devices[index] as DeviceSpec).name,
        size: archiveDeviceSize(source.size),
      })),
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

/** The store the request names; invalid-argument TARGET_UNKNOWN naming the ones there are. */
function chooseStore(state: EngineState, targetName: string): ArchiveStore {
  const store = state.stores.get(targetName);
  if (store !== undefined) return store;
  const known = [...state.stores.keys()].map(quote).join(", ");
  throw new EngineError(
    "invalid-argument",
    REASON.TARGET_UNKNOWN,
    `target: this server has no target ${quote(targetName)}; its targets are ${known}`,
    "target",
  );
}

/** An object store's key as the request gives it: a relative name without "." or ".." parts. */
function objectKey(backupFile: string): string {
  try {
    checkKey(backupFile);
  } catch (error) {
    if (error instanceof ArchiveKeyError) {
      throw new EngineError(
        "invalid-argument",
        REASON.BACKUP_FILE_INVALID,
        `backup_file: ${error.message}`,
        "backup_file",
      );
    }
    throw error;
  }
  return backupFile;
}

interface TargetChoice {
  /** The store's key of the archive. */
  readonly key: string;
  /** The archive as the job's status names it, for error messages. */
  readonly backupFile: string;
  readonly uuid: string;
  readonly compression: Compression;
}

/** Creates the archive in the chosen store, through the compression stage, and the format's target on it. */
async function openTarget(store: ArchiveStore, driver: BackupDriver, choice: TargetChoice): Promise<CommittedTarget> {
  const { backupFile } = choice;
  let upload: ArchiveUpload;
  try {
    upload = await store.create(choice.key);
  } catch (error) {
    throw targetOpenError(error, backupFile);
  }
  try {
    return new CommittedTarget(driver.openUpload(compressUpload(upload, { compression: choice.compression }), choice));
  } catch (error) {
    await upload.abort();
    throw error;
  }
}

/**
 * Configs first, then the devices as dev_ids 1..N in request order, each
 * with its size rounded up to 512 (the reader pads the tail with zeros).
 */
function registerContents(target: BackupTarget, spec: BackupSpec, sources: readonly DiskSource[]): void {
  for (const config of spec.configs) target.registerConfig(config.name, config.data);
  sources.forEach((source, index) => {
    const name = (spec.devices[index] as DeviceSpec).name;
    const devId = target.registerDevice(name, archiveDeviceSize(source.size));
    if (devId !== index + 1) {
      throw new Error(`driver gave device ${name} dev_id ${devId}, expected ${index + 1}`);
    }
  });
}

/** Announces the job and runs it to its end in the background; shutdown waits for the run. */
function launch(state: EngineState, job: Job, target: CommittedTarget, sources: JobSources): void {
  const limiter = new SpeedLimiter(job.speedLimit);
  state.limiters.set(job.uuid, limiter);
  const first = job.snapshot();
  state.hub.publishState(first);
  state.logger.info(
    {
      uuid: job.uuid,
      backupFile: job.backupFile,
      devices: sources.sources.map((source, index) => ({
        name: first.devices[index]?.name,
        path: source.location,
        size: source.size,
      })),
      totalBytes: job.totalBytes,
      speedLimit: job.speedLimit,
      ...(job.requestId === undefined ? {} : { requestId: job.requestId }),
    },
    "backup started",
  );
  const run = runToEnd(state, job, target, sources, limiter).catch((error: unknown) => {
    // runToEnd handles every failure of the job itself; this is a bug.
    state.logger.error({ uuid: job.uuid, err: error }, "finishing a backup failed unexpectedly");
  });
  state.running.add(run);
  void run.then(() => state.running.delete(run));
}
