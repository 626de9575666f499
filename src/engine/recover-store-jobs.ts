// Startup recovery of the jobs whose archive went to a store other than
// the plain local one (an S3 target, or a compressed local archive, whose
// bytes recover-jobs.ts cannot check in place): asks the store whether the
// job's object was committed after all (findCommitted: the store proves it
// is the job's own, by file identity or the upload's token); if so, reads
// it back and ends the job DONE when our reader finds it valid and complete
// with the job's uuid. Otherwise the store removes what the job left
// (discardLeftover: the partial file, the unfinished multipart upload) and
// the job ends in error, as recover-jobs.ts does for local archives.
import type { Logger } from "pino";
import { ArchiveKeptError, type ArchiveRef, type ArchiveStore } from "../stores/archive-store.js";
import { DEFAULT_TARGET } from "../stores/store-targets.js";
import type { JobStore } from "../store/job-store.js";
import { openArchiveStream } from "../vma/open-archive.js";
import { storedInDevice } from "../vma/scan-archive-file.js";
import { verifyArchive } from "../vma/verify-archive.js";
import { describeError } from "./job-failure.js";
import { fromStoredJob, type JobExtras, toStoredJob } from "./job-record.js";
import { endInterrupted } from "./recover-jobs.js";
import { archiveKey, recoveredThroughStore } from "./recovery-routes.js";
import type { DeviceStatus, JobStatus } from "./types.js";

export interface StoreRecoveryContext {
  readonly store: JobStore;
  readonly stores: ReadonlyMap<string, ArchiveStore>;
  /** Real path of the backup dir: local keys are relative to it. */
  readonly backupDir: string;
  readonly now: () => number;
  readonly nextRevision: () => number;
  readonly logger: Logger;
}

/** Ends every active job left to this module; returns their new statuses. */
export async function recoverStoreJobs(context: StoreRecoveryContext): Promise<JobStatus[]> {
  const recovered: JobStatus[] = [];
  for (const stored of context.store.inState("active")) {
    const { status, extras } = fromStoredJob(stored);
    if (!recoveredThroughStore(status, extras)) continue;
    recovered.push(await recoverOne(context, status, extras));
  }
  return recovered;
}

async function recoverOne(context: StoreRecoveryContext, status: JobStatus, extras: JobExtras): Promise<JobStatus> {
  const { uuid, backupFile } = status;
  const target = extras.target ?? DEFAULT_TARGET;
  const store = context.stores.get(target);
  const pending = extras.pending;
  if (store === undefined || pending === undefined) {
    context.logger.error(
      { uuid, backupFile, target },
      store === undefined
        ? "the job's target is not configured: what it left there is not checked"
        : "the job's record holds no archive reference: nothing is removed",
    );
    return endInterrupted(context, status, extras);
  }
  try {
    const committed = await store.findCommitted(pending);
    if (committed !== undefined) {
      const done = await finishCommitted(context, store, status, extras, committed);
      if (done !== undefined) return done;
      return endInterrupted(context, status, extras);
    }
    const removal = await store.discardLeftover(pending);
    if (removal === "removed") context.logger.info({ uuid, target }, "removed the partial archive");
  } catch (error) {
    if (error instanceof ArchiveKeptError) {
      context.logger.warn({ uuid, target, reason: error.message }, "left a file that is not the job's own");
    } else {
      context.logger.error({ uuid, target, reason: describeError(error) }, "could not remove the partial archive");
    }
  }
  return endInterrupted(context, status, extras);
}

/** Reads the committed archive back; the job ends DONE when it is valid, complete and the job's. */
async function finishCommitted(
  context: StoreRecoveryContext,
  store: ArchiveStore,
  status: JobStatus,
  extras: JobExtras,
  committed: ArchiveRef,
): Promise<JobStatus | undefined> {
  const { uuid, backupFile } = status;
  const stored = new Map<number, number>();
  let problem: string | undefined;
  try {
    const key = archiveKey(context.backupDir, extras.target ?? DEFAULT_TARGET, backupFile);
    const opened = await openArchiveStream(await store.read(key), undefined);
    let sizes = new Map<number, number>();
    const verdict = await verifyArchive(opened.chunks, {
      allowIncomplete: false,
      onHeader: (header) => {
        sizes = new Map([...header.devices].map(([devId, device]) => [devId, device.size]));
      },
      onExtent: (extent) => {
        for (const slot of extent.slots) {
          const bytes = storedInDevice(slot.cluster, slot.mask, sizes.get(slot.devId) ?? 0);
          stored.set(slot.devId, (stored.get(slot.devId) ?? 0) + bytes);
        }
      },
    });
    if (!verdict.ok) problem = verdict.problems[0]?.message ?? "not valid";
    else if (verdict.header?.uuid !== uuid) problem = `it holds archive ${verdict.header?.uuid}, not ${uuid}`;
  } catch (error) {
    problem = describeError(error);
  }
  if (problem !== undefined) {
    context.logger.error({ uuid, backupFile, problem }, "the published archive is not valid and complete");
    return undefined;
  }
  const devices: DeviceStatus[] = status.devices.map((device) => ({
    ...device,
    transferredBytes: device.size,
    zeroBytes: Math.max(0, device.size - (stored.get(device.devId) ?? 0)),
  }));
  const now = context.now();
  const done: JobStatus = {
    ...status,
    state: "done",
    errorMessage: "",
    transferredBytes: status.totalBytes,
    zeroBytes: devices.reduce((sum, device) => sum + device.zeroBytes, 0),
    devices,
    endTime: new Date(now),
    updateTime: new Date(now),
    revision: context.nextRevision(),
    rate: 0,
  };
  context.store.save(toStoredJob(done, { ...extras, archive: committed }));
  context.logger.info({ uuid, backupFile }, "backup finished before a server restart: its archive was published");
  return done;
}
