// A launched job's life to its end: runs the read pipeline, saves progress
// (coalesced) and publishes it, then releases sources, locks and limiter,
// records the store's reference of the committed archive, stores the end (or keeps it
// for the background retry) and publishes and logs the terminal status.
import type { CommittedTarget } from "./committed-target.js";
import type { EngineState } from "./engine-state.js";
import type { Job } from "./job.js";
import { describeError } from "./job-failure.js";
import { runJob } from "./job-runner.js";
import type { JobOutcome } from "./job-runner.js";
import type { JobSources } from "./job-sources.js";
import { watchScratch } from "./scratch-watch.js";
import type { SpeedLimiter } from "./speed-limiter.js";
import type { JobStatus } from "./types.js";

/** Runs the job, then releases everything, stores and publishes the terminal status. Never rejects. */
export async function runToEnd(
  state: EngineState,
  job: Job,
  target: CommittedTarget,
  sources: JobSources,
  limiter: SpeedLimiter,
): Promise<void> {
  const { logger, registry, hub } = state;
  const snapshot = (): JobStatus => job.snapshot();
  let outcome: JobOutcome;
  const scratch = watchScratch(job, sources.sources, () => hub.publishProgress(job.uuid, snapshot));
  try {
    outcome = await runJob({
      job,
      target,
      sources: sources.sources,
      names: job.snapshot().devices.map((device) => device.name),
      limiter,
      onProgress: () => {
        saveProgress(state, job);
        hub.publishProgress(job.uuid, snapshot);
      },
    });
  } catch (error) {
    outcome = { state: "error", errorMessage: `internal error: ${describeError(error)}`, unexpected: error };
  }
  // Everything is released before the terminal status goes out, so that a
  // watcher may start the next backup of the same devices right away.
  scratch.stop();
  await sources.close();
  state.locks.release(job.uuid);
  state.limiters.delete(job.uuid);
  if (outcome.state === "done") recordArchive(state, job, target);
  if (outcome.cleanupError !== undefined) {
    state.leftoverPartials.set(job.uuid, { target: job.target, pending: job.pending });
  }
  job.finish(outcome.state, outcome.errorMessage);
  try {
    registry.complete(job);
  } catch (error) {
    // The registry keeps the end in memory and shows it; it is stored later.
    logger.error(
      { uuid: job.uuid, state: job.state, err: error },
      "storing the end of a backup failed; it is kept in memory and stored again in the background",
    );
    state.storeRetry.schedule();
  }
  try {
    hub.publishState(job.snapshot());
    logEnd(state, job.snapshot(), outcome);
  } finally {
    // cancel() and shutdown() wait on this, whatever happened above.
    job.settle();
  }
}

/** Progress goes to the store at most once a second; a failure must not stop the job. */
function saveProgress(state: EngineState, job: Job): void {
  try {
    state.registry.saveProgress(job);
  } catch (error) {
    state.logger.warn({ uuid: job.uuid, err: error }, "storing backup progress failed");
  }
}

/** Notes which object the store committed, so that deleting the job later removes only that one. */
function recordArchive(state: EngineState, job: Job, target: CommittedTarget): void {
  const committed = target.committed;
  if (committed === undefined) {
    // A done job has closed its target; without a reference delete refuses to remove anything.
    state.logger.warn({ uuid: job.uuid }, "the committed archive's reference is missing");
    return;
  }
  job.recordArchive(committed);
}

function logEnd(state: EngineState, status: JobStatus, outcome: JobOutcome): void {
  const { logger } = state;
  const durationMs = (status.endTime?.getTime() ?? state.now()) - status.startTime.getTime();
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
    logger.error({ uuid: status.uuid, err: outcome.unexpected }, "backup failed unexpectedly");
  }
  if (outcome.cleanupError !== undefined) {
    logger.error({ uuid: status.uuid, err: outcome.cleanupError }, "removing the partial archive failed");
  }
  if (status.state === "error") logger.warn(fields, "backup finished");
  else logger.info(fields, "backup finished");
}
