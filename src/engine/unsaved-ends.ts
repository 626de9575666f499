// Job ends the store refused (its disk was full): the registry keeps them
// in memory; these store them later, in the background, before anything
// else that needs the store, or at the last chance before closing.
import type { EngineState } from "./engine-state.js";

/** One background try at storing the unsaved job ends; true when none is left. */
export function retryUnsaved(state: EngineState): boolean {
  const { registry, logger } = state;
  if (state.closed || registry.unsavedCount === 0) return true;
  const jobs = registry.unsavedJobs();
  try {
    registry.flushUnsaved();
  } catch (error) {
    logger.warn({ unsaved: registry.unsavedCount, err: error }, "storing backup ends still fails; retrying");
    return false;
  }
  logger.info({ jobs }, "stored backup ends the job store had refused");
  return true;
}

/** Stores the unsaved job ends now, or refuses (RESOURCE_EXHAUSTED, UNAVAILABLE) what needs the store. */
export function flushUnsavedOrRefuse(state: EngineState, what: string): void {
  const { registry } = state;
  if (registry.unsavedCount === 0) return;
  const jobs = registry.unsavedJobs();
  state.usingStore(what, () => registry.flushUnsaved());
  state.storeRetry.stop();
  state.logger.info({ jobs }, "stored backup ends the job store had refused");
}

/** The last chance for unsaved job ends: after a restart they would read "interrupted". */
export function storeUnsavedBeforeClose(state: EngineState): void {
  const { registry, logger } = state;
  if (registry.unsavedCount === 0) return;
  const jobs = registry.unsavedJobs();
  try {
    registry.flushUnsaved();
    logger.info({ jobs }, "stored backup ends the job store had refused");
  } catch (error) {
    logger.error(
      { jobs: registry.unsavedJobs(), err: error },
      "the job store still refuses these backup ends; after a restart they will read as interrupted",
    );
  }
}
