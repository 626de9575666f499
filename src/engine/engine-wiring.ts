// Builds an engine's parts on its state dir: takes the state dir lock,
// opens the job store, recovers the jobs a dead process left active, and
// sets up the registry, the status hub and the background store retry.
// Undoes what it took when a later step fails.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Logger } from "pino";
import type { BackupDriver } from "../drivers/driver.js";
import type { ArchiveStore } from "../stores/archive-store.js";
import { createStores } from "../stores/store-targets.js";
import { JobStore } from "../store/job-store.js";
import { StateDirLock } from "../store/state-dir-lock.js";
import { BackoffRetry } from "./backoff-retry.js";
import type { RetryDelays } from "./backoff-retry.js";
import { DeviceLocks } from "./device-locks.js";
import { EngineState } from "./engine-state.js";
import { JobRegistry } from "./job-registry.js";
import { PathPolicy } from "./path-policy.js";
import { recoverInterruptedJobs } from "./recover-jobs.js";
import { recoverStoreJobs } from "./recover-store-jobs.js";
import { RevisionCounter } from "./revision-counter.js";
import { createSourceOpeners } from "./source-openers.js";
import type { SourceOpenerContext } from "./source-openers.js";
import type { SourceOpeners } from "./source-opener.js";
import { StatusHub } from "./status-hub.js";
import type { EngineOptions } from "./types.js";
import { retryUnsaved } from "./unsaved-ends.js";

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
  /**
   * Who opens each kind of source (default createSourceOpeners, see
   * source-openers.ts); tests put their own in.
   */
  readonly sourceOpeners?: (context: SourceOpenerContext) => SourceOpeners;
  /**
   * The stores archives go to, by target name, given the backup dir's real
   * path; it must hold DEFAULT_TARGET ("local"). Default: only the backup dir.
   */
  readonly openStores?: (backupDir: string) => ReadonlyMap<string, ArchiveStore>;
}

/** The scratch directory of qemu sources when the options name none. */
export const SCRATCH_DIR_NAME = "scratch";

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

const monotonic = (): number => performance.now();

/** Creates the state dir when missing. */
export async function prepareStateDir(options: BackupEngineOptions): Promise<void> {
  await fs.mkdir(options.stateDir, { recursive: true });
}

/**
 * The engine's parts on an existing state dir. Throws when the backup dir
 * or a source root does not exist, when another engine holds the state dir
 * (StateDirLockedError) or its database is of a newer schema (StoreVersionError).
 */
export function wireEngine(options: BackupEngineOptions): EngineState {
  const logger = options.logger;
  const policy = new PathPolicy(options.backupDir, options.sourceRoots);
  const now = options.now ?? Date.now;
  const hub = new StatusHub(options.progressIntervalMs);
  const lock = StateDirLock.acquire(path.join(options.stateDir, STATE_DIR_LOCK_FILE));
  let store: JobStore;
  try {
    store = JobStore.open(path.join(options.stateDir, JOB_STORE_FILE));
  } catch (error) {
    lock.release();
    throw error;
  }
  let state: EngineState;
  try {
    const revisions = new RevisionCounter(store, (error) => {
      logger.error({ err: error }, "reserving revisions in the job store failed");
    });
    const jobContext = { now, monotonic, nextRevision: () => revisions.next() };
    const registry = new JobRegistry(store, monotonic);
    const stores =
      options.openStores?.(policy.backupDir) ??
      createStores({ backupDir: policy.backupDir, targets: options.targets ?? [], s3: options.s3 ?? {} });
    recoverInterruptedJobs({
      store,
      backupDir: policy.backupDir,
      now,
      nextRevision: jobContext.nextRevision,
      logger,
    });
    state = new EngineState({
      drivers: options.drivers,
      logger,
      policy,
      now,
      locks: new DeviceLocks(),
      store,
      stateDirLock: lock,
      revisions,
      jobContext,
      registry,
      hub,
      openers: (options.sourceOpeners ?? createSourceOpeners)({
        confinement: policy,
        stateDir: options.stateDir,
        scratchDir: options.scratchDir ?? path.join(options.stateDir, SCRATCH_DIR_NAME),
        nbdAllow: options.nbdAllow ?? [],
        qmpRoots: options.qmpRoots ?? [],
        logger,
      }),
      sourceSettings: { nbdAllow: options.nbdAllow ?? [], qmpRoots: options.qmpRoots ?? [], confinement: policy },
      stores,
    });
  } catch (error) {
    store.close();
    lock.release();
    throw error;
  }
  state.storeRetry = new BackoffRetry(() => retryUnsaved(state), options.storeRetryDelayMs ?? STORE_RETRY_DELAYS);
  return state;
}

/** The jobs a dead process left active whose archives only their stores can check (recover-store-jobs.ts). */
export async function recoverThroughStores(state: EngineState): Promise<void> {
  await recoverStoreJobs({
    store: state.store,
    stores: state.stores,
    backupDir: state.policy.backupDir,
    now: state.now,
    nextRevision: state.jobContext.nextRevision,
    logger: state.logger,
  });
}
