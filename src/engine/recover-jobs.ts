// Startup recovery. A job the store still has as active was running when
// the previous process died (crash, kill -9, power loss): nothing will ever
// finish it. It becomes an error with a fixed message, its end time set and
// a new revision, after its partial archive was removed, so that the same
// backup can simply be started again. The partial file goes first: should
// we die in between, the job is still active and the next start retries.
import type { Logger } from "pino";
import type { JobStore } from "../store/job-store.js";
import { describeError } from "./job-failure.js";
import { fromStoredJob, toStoredJob } from "./job-record.js";
import { FileKeptError, removePartialFileSync } from "./owned-files.js";
import type { JobStatus } from "./types.js";

export const INTERRUPTED_MESSAGE = "interrupted: server restarted";

export interface RecoveryContext {
  readonly store: JobStore;
  /** Real path of the backup dir: partial files are removed only inside it. */
  readonly backupDir: string;
  readonly now: () => number;
  readonly nextRevision: () => number;
  readonly logger: Logger;
}

/** Ends every job left active; returns their new statuses. Throws when the store fails. */
export function recoverInterruptedJobs(context: RecoveryContext): JobStatus[] {
  const recovered: JobStatus[] = [];
  for (const stored of context.store.inState("active")) {
    const { status, extras } = fromStoredJob(stored);
    if (extras.partialPath !== undefined) removePartial(context, status.uuid, extras.partialPath);
    const now = context.now();
    const interrupted: JobStatus = {
      ...status,
      state: "error",
      errorMessage: INTERRUPTED_MESSAGE,
      endTime: new Date(now),
      updateTime: new Date(now),
      revision: context.nextRevision(),
      rate: 0,
    };
    context.store.save(toStoredJob(interrupted, extras));
    context.logger.warn(
      { uuid: status.uuid, backupFile: status.backupFile, transferredBytes: status.transferredBytes },
      "backup interrupted by a server restart",
    );
    recovered.push(interrupted);
  }
  return recovered;
}

function removePartial(context: RecoveryContext, uuid: string, partialPath: string): void {
  try {
    const removal = removePartialFileSync(context.backupDir, partialPath);
    if (removal === "removed") context.logger.info({ uuid, partialPath }, "removed the partial archive");
  } catch (error) {
    // The job still ends in error; the file is left for an operator.
    const reason = error instanceof FileKeptError ? error.message : describeError(error);
    context.logger.error({ uuid, partialPath, reason }, "could not remove the partial archive");
  }
}
