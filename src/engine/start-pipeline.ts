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
import type { DiskSource } from "../sources/disk-source.js";
import { sourceField, sourceLocation } from "./device-source.js";
import { openJobSources } from "./job-sources.js";
import type { JobSources } from "./job-sources.js";
import { SpeedLimiter } from "./speed-limiter.js";
import { targetOpenError } from "./target-open-error.js";
import type { BackupSpec, DeviceSpec, JobStatus } from "./types.js";
import { flushUnsavedOrRefuse } from "./unsaved-ends.js";
import { checkSourcesAllowed, validateRequest } from "./validate-request.js";

/** Validates, creates, stores and launches a job; resolves with its first (ACTIVE) status. */
export async function startJob(
  state: EngineState,
  spec: BackupSpec,
  request: RequestIdentity | undefined,
): Promise<JobStatus> {
  retryLeftoverPartials(state);
  const driver = validateRequest(spec, state.drivers);
  checkSourcesAllowed(spec, state.sourceSettings);
  // A store that cannot take the ends of earlier jobs cannot record this
  // one: refused before any source or archive is opened.
  flushUnsavedOrRefuse(state, "cannot record a new job");
  const backupFile = await state.policy.resolveBackupFile(spec.backupFile);
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
      archivePath: backupFile,
      devices: sources.map((source, index) => {
        const requested = (spec.devices[index] as DeviceSpec).source;
        return { key: source.lockKey, field: sourceField(requested, index), path: sourceLocation(requested) };
      }),
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
function launch(state: EngineState, job: Job, target: BackupTarget, sources: JobSources): void {
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
