// Startup recovery. A job the store still has as active was running when
// the previous process died (crash, kill -9, power loss): nothing will ever
// finish it. When it died after publishing its archive, the archive is
// complete and the job ends DONE (published-archive.ts). Otherwise it
// becomes an error with a fixed message, its end time set and a new
// revision, after its partial archive was removed, so that the same backup
// can simply be started again. The partial file goes first: should we die
// in between, the job is still active and the next start retries.
//
// Only files proven to be the job's own are touched (owned-files.ts): the
// backup dir may be shared with another server writing the same names.
// This covers the local store (its pending reference names the partial
// file and its identity); jobs of other stores are recovered through their
// store (recover-store-jobs.ts).
import type { Logger } from "pino";
import type { ArchiveRef } from "../stores/archive-store.js";
import { PARTIAL_SUFFIX } from "../stores/local/archive-file.js";
import type { JobStore } from "../store/job-store.js";
import { describeError } from "./job-failure.js";
import { fromStoredJob, toStoredJob } from "./job-record.js";
import type { JobExtras } from "./job-record.js";
import { FileKeptError, type FileOwner, removePartialFileSync } from "./owned-files.js";
import { findPublishedArchiveSync, type PublishedArchive } from "./published-archive.js";
import type { FileIdentity } from "./job.js";
import { recoveredThroughStore } from "./recovery-routes.js";
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
    const { status, extras: storedExtras } = fromStoredJob(stored);
    if (recoveredThroughStore(status, storedExtras)) continue;
    const extras = withLocalPartial(storedExtras);
    const owner: FileOwner | undefined =
      extras.pending === undefined ? undefined : { file: fileOf(extras.pending), uuid: status.uuid };
    const ended =
      (owner && finishPublished(context, status, extras, owner)) ?? interrupt(context, status, extras, owner);
    recovered.push(ended);
  }
  return recovered;
}

/** Ends the job DONE when its archive was published; undefined when it was not. */
function finishPublished(
  context: RecoveryContext,
  status: JobStatus,
  extras: JobExtras,
  owner: FileOwner,
): JobStatus | undefined {
  const { uuid, backupFile } = status;
  let published: PublishedArchive;
  try {
    published = findPublishedArchiveSync(context.backupDir, status, owner);
  } catch (error) {
    context.logger.error({ uuid, backupFile, reason: reasonOf(error) }, "could not check the published archive");
    return undefined;
  }
  if (published.kind === "invalid") {
    // The job's own file, but nothing to restore from: left for an operator, the job ends in error.
    context.logger.error(
      { uuid, backupFile, problem: published.problem },
      "the published archive is not valid and complete",
    );
    return undefined;
  }
  if (published.kind === "none") return undefined;
  // The partial name may still be linked to the archive (died between link and unlink).
  if (extras.partialPath !== undefined) removePartial(context, uuid, extras.partialPath, owner);
  const now = context.now();
  const done: JobStatus = {
    ...status,
    state: "done",
    errorMessage: "",
    transferredBytes: status.totalBytes,
    zeroBytes: published.devices.reduce((sum, device) => sum + device.zeroBytes, 0),
    devices: published.devices,
    endTime: new Date(Math.min(published.writtenAt, now)),
    updateTime: new Date(now),
    revision: context.nextRevision(),
    rate: 0,
  };
  const archive: ArchiveRef = {
    ...(extras.pending ?? { store: "local", path: backupFile, born: "0" }),
    dev: published.identity.dev,
    ino: published.identity.ino,
    size: String(published.identity.size),
  };
  context.store.save(toStoredJob(done, { ...withoutLocalPartial(extras), archive }));
  context.logger.info({ uuid, backupFile }, "backup finished before a server restart: its archive was published");
  return done;
}

function interrupt(
  context: RecoveryContext,
  status: JobStatus,
  extras: JobExtras,
  owner: FileOwner | undefined,
): JobStatus {
  if (extras.partialPath !== undefined) removePartial(context, status.uuid, extras.partialPath, owner);
  return endInterrupted(context, status, withoutLocalPartial(extras));
}

/** Ends a job the previous process left active in error, stores and logs it (every recovery route ends so). */
export function endInterrupted(
  context: Pick<RecoveryContext, "store" | "now" | "nextRevision" | "logger">,
  status: JobStatus,
  extras: JobExtras,
): JobStatus {
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
  return interrupted;
}

/** Removes the job's own partial file; a record without the file's identity proves nothing. */
function removePartial(
  context: RecoveryContext,
  uuid: string,
  partialPath: string,
  owner: FileOwner | undefined,
): void {
  if (owner === undefined) {
    context.logger.warn({ uuid, path: partialPath }, "left a file that is not the job's own");
    return;
  }
  try {
    const removal = removePartialFileSync(context.backupDir, partialPath, owner);
    if (removal === "removed") context.logger.info({ uuid, partialPath }, "removed the partial archive");
  } catch (error) {
    if (error instanceof FileKeptError && error.why === "not-the-jobs-own") {
      context.logger.warn({ uuid, path: partialPath, reason: error.message }, "left a file that is not the job's own");
      return;
    }
    // The job still ends in error; the file is left for an operator.
    context.logger.error({ uuid, partialPath, reason: reasonOf(error) }, "could not remove the partial archive");
  }
}

/** The local store's pending reference names the final path; its partial file is beside it. */
function withLocalPartial(extras: JobExtras): JobExtras {
  if (extras.pending === undefined || extras.pending.store !== "local") return extras;
  return { ...extras, partialPath: `${extras.pending.path}${PARTIAL_SUFFIX}` };
}

/** The partial path was only derived here; the record keeps the reference. */
function withoutLocalPartial(extras: JobExtras): JobExtras {
  if (extras.pending === undefined) return extras;
  const { partialPath: _derived, ...rest } = extras;
  return rest;
}

function fileOf(pending: ArchiveRef): FileIdentity {
  return { dev: pending.dev ?? "", ino: pending.ino ?? "", born: pending.born ?? "0" };
}

function reasonOf(error: unknown): string {
  return error instanceof FileKeptError ? error.message : describeError(error);
}
