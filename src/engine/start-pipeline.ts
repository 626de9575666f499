// Starting one backup, step by step: validate the request, open the
// sources, ask the driver whether its format can hold the plan, lock the
// devices and archive path, open the target, register configs and
// devices, store the job, then launch its run in the background. Each
// step undoes what the earlier ones took when a later one fails.
import { v4 as uuidv4 } from "uuid";
import { ArchiveLimitError } from "../drivers/driver.js";
import type { BackupDriver, BackupTarget } from "../drivers/driver.js";
import { archiveDeviceSize } from "./archive-size.js";
import { EngineError } from "./errors.js";
import type { EngineState } from "./engine-state.js";
import { Job } from "./job.js";
import { FileKeptError, removePartialFileSync } from "./owned-files.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import type { RequestIdentity } from "./request-dedup.js";
import { runToEnd } from "./run-lifecycle.js";
import { closeSources, openSource } from "./source-device.js";
import type { SourceDevice } from "./source-device.js";
import { SpeedLimiter } from "./speed-limiter.js";
import { targetOpenError } from "./target-open-error.js";
import type { BackupSpec, JobStatus } from "./types.js";
import { flushUnsavedOrRefuse } from "./unsaved-ends.js";
import { validateRequest } from "./validate-request.js";

/** Validates, creates, stores and launches a job; resolves with its first (ACTIVE) status. */
export async function startJob(
  state: EngineState,
  spec: BackupSpec,
  request: RequestIdentity | undefined,
): Promise<JobStatus> {
  retryLeftoverPartials(state);
  const driver = validateRequest(spec, state.drivers);
  // A store that cannot take the ends of earlier jobs cannot record this
  // one: refused before any source or archive is opened.
  flushUnsavedOrRefuse(state, "cannot record a new job");
  const backupFile = await state.policy.resolveBackupFile(spec.backupFile);
  const sources = await openSources(state, spec);
  const uuid = uuidv4();
  let locked = false;
  try {
    checkDistinctSources(spec, sources);
    checkPlan(driver, spec, sources);
    state.ensureOpen();
    state.locks.acquire({
      owner: uuid,
      archivePath: backupFile,
      devices: sources.map((source, index) => ({
        key: source.lockKey,
        field: `devices[${index}].path`,
        path: spec.devices[index]?.path ?? source.path,
      })),
    });
    locked = true;
    const target = await openTarget(state, driver, backupFile, uuid);
    let job: Job;
    try {
      state.ensureOpen();
      registerContents(target, spec, sources);
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
        state.jobContext,
      );
      // Stored before it is announced: from here on a crash leaves a
      // record that recovery finishes (and whose partial file it removes).
      state.registry.add(job);
    } catch (error) {
      await target.abort().catch((abortError: unknown) => {
        state.logger.warn({ uuid, err: abortError }, "removing an unused archive failed");
      });
      throw error;
    }
    launch(state, job, target, sources);
    return job.snapshot();
  } catch (error) {
    if (locked) state.locks.release(uuid);
    await closeSources(sources);
    throw error;
  }
}

/** Partial archives earlier jobs could not remove: tried again before each new job. */
function retryLeftoverPartials(state: EngineState): void {
  for (const [partialPath, owner] of state.leftoverPartials) {
    try {
      removePartialFileSync(state.policy.backupDir, partialPath, owner);
      state.leftoverPartials.delete(partialPath);
      state.logger.info({ partialPath }, "removed a partial archive left by a failed job");
    } catch (error) {
      if (error instanceof FileKeptError) state.leftoverPartials.delete(partialPath);
      // Otherwise (still read-only, say) try again before the next job.
    }
  }
}

/** Opens every source in request order; on failure closes those already open. */
async function openSources(state: EngineState, spec: BackupSpec): Promise<SourceDevice[]> {
  const sources: SourceDevice[] = [];
  try {
    for (const [index, device] of spec.devices.entries()) {
      sources.push(await openSource(state.policy, device, index));
    }
    return sources;
  } catch (error) {
    await closeSources(sources);
    throw error;
  }
}

function checkDistinctSources(spec: BackupSpec, sources: readonly SourceDevice[]): void {
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
function checkPlan(driver: BackupDriver, spec: BackupSpec, sources: readonly SourceDevice[]): void {
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

async function openTarget(
  state: EngineState,
  driver: BackupDriver,
  backupFile: string,
  uuid: string,
): Promise<BackupTarget> {
  try {
    return await driver.open({ path: backupFile, uuid, confineTo: state.policy.backupDir });
  } catch (error) {
    throw targetOpenError(error, backupFile);
  }
}

/**
 * Configs first, then the devices as dev_ids 1..N in request order, each
 * with its size rounded up to 512 (the reader pads the tail with zeros).
 */
function registerContents(target: BackupTarget, spec: BackupSpec, sources: readonly SourceDevice[]): void {
  for (const config of spec.configs) target.registerConfig(config.name, config.data);
  sources.forEach((source, index) => {
    const devId = target.registerDevice(source.name, archiveDeviceSize(source.size));
    if (devId !== index + 1) {
      throw new Error(`driver gave device ${source.name} dev_id ${devId}, expected ${index + 1}`);
    }
  });
}

/** Announces the job and runs it to its end in the background; shutdown waits for the run. */
function launch(state: EngineState, job: Job, target: BackupTarget, sources: readonly SourceDevice[]): void {
  const limiter = new SpeedLimiter(job.speedLimit);
  state.limiters.set(job.uuid, limiter);
  state.hub.publishState(job.snapshot());
  state.logger.info(
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
  const run = runToEnd(state, job, target, sources, limiter).catch((error: unknown) => {
    // runToEnd handles every failure of the job itself; this is a bug.
    state.logger.error({ uuid: job.uuid, err: error }, "finishing a backup failed unexpectedly");
  });
  state.running.add(run);
  void run.then(() => state.running.delete(run));
}
