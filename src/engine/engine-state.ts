// What the parts of the engine share: its collaborators (store, registry,
// hub, locks, limiters), the promises shutdown waits for, whether it is
// closing, and the guards every entry point runs (open? store open? a
// uuid? a store that refuses?). Built by engine-wiring.ts; the other
// engine-* files act on it.
import type { Logger } from "pino";
import type { BackupDriver } from "../drivers/driver.js";
import type { JobStore } from "../store/job-store.js";
import type { StateDirLock } from "../store/state-dir-lock.js";
import type { BackoffRetry } from "./backoff-retry.js";
import type { DeviceLocks } from "./device-locks.js";
import { EngineError } from "./errors.js";
import type { JobContext } from "./job.js";
import type { JobRegistry } from "./job-registry.js";
import type { ArchiveRef, ArchiveStore } from "../stores/archive-store.js";
import type { PathPolicy } from "./path-policy.js";
import { parseUuid } from "./job-uuid.js";
import { REASON } from "./reasons.js";
import type { RevisionCounter } from "./revision-counter.js";
import type { SpeedLimiter } from "./speed-limiter.js";
import type { StatusHub } from "./status-hub.js";
import type { SourceOpeners } from "./source-opener.js";
import type { JobStatus } from "./types.js";
import type { SourceSettings } from "./validate-sources.js";
import { storeRefusal } from "./store-refusal.js";

/** What the wiring builds and hands to the state. */
export type EngineParts = Pick<
  EngineState,
  | "drivers"
  | "logger"
  | "policy"
  | "now"
  | "locks"
  | "store"
  | "stateDirLock"
  | "revisions"
  | "jobContext"
  | "registry"
  | "hub"
  | "openers"
  | "sourceSettings"
  | "stores"
>;

/** What a failed job could not remove from its store, to try again. */
export interface LeftoverArchive {
  /** The store's name. */
  readonly target: string;
  readonly pending: ArchiveRef;
}

export class EngineState {
  readonly drivers: readonly BackupDriver[];
  readonly logger: Logger;
  readonly policy: PathPolicy;
  readonly now: () => number;
  readonly locks: DeviceLocks;
  readonly store: JobStore;
  readonly stateDirLock: StateDirLock;
  readonly revisions: RevisionCounter;
  readonly jobContext: JobContext;
  readonly registry: JobRegistry;
  readonly hub: StatusHub;
  /** Who opens each kind of source (source-openers.ts). */
  readonly openers: SourceOpeners;
  /** Which source kinds and places the server's settings allow. */
  readonly sourceSettings: SourceSettings;
  /** The stores archives go to, by target name ("local": the backup dir). */
  readonly stores: ReadonlyMap<string, ArchiveStore>;
  /**
   * Archives a failed job could not remove (its filesystem went read-only,
   * say); retried before every new job through the store, which removes
   * only what the pending reference names. By job uuid.
   */
  readonly leftoverPartials = new Map<string, LeftoverArchive>();
  /** The limiter of each running job, by uuid. */
  readonly limiters = new Map<string, SpeedLimiter>();
  /** start() calls in progress and jobs running, so that shutdown can wait for them. */
  readonly starting = new Set<Promise<unknown>>();
  readonly running = new Set<Promise<void>>();
  /** Starts with a request id in progress (settled form), by request id. */
  readonly requests = new Map<string, Promise<void>>();
  /** Stores the job ends the store refused, in the background (set once by the wiring). */
  storeRetry!: BackoffRetry;
  /** shutdown() began: no new jobs. */
  closing = false;
  /** shutdown() finished: the store is closed. */
  closed = false;

  constructor(parts: EngineParts) {
    this.drivers = parts.drivers;
    this.logger = parts.logger;
    this.policy = parts.policy;
    this.now = parts.now;
    this.locks = parts.locks;
    this.store = parts.store;
    this.stateDirLock = parts.stateDirLock;
    this.revisions = parts.revisions;
    this.jobContext = parts.jobContext;
    this.registry = parts.registry;
    this.hub = parts.hub;
    this.openers = parts.openers;
    this.sourceSettings = parts.sourceSettings;
    this.stores = parts.stores;
  }

  /** No new jobs once shutdown began. */
  ensureOpen(): void {
    if (this.closing) {
      throw new EngineError(
        "unavailable",
        REASON.ENGINE_SHUT_DOWN,
        "the server is shutting down; retry on another instance or after restart",
      );
    }
  }

  /** Nothing at all once shutdown finished (the store is closed). */
  ensureStoreOpen(): void {
    if (this.closed) {
      throw new EngineError("unavailable", REASON.ENGINE_SHUT_DOWN, "the server has shut down; retry after restart");
    }
  }

  /** Runs `action`, answering a failing store as a refusal (see store-refusal.ts) instead of as an internal error. */
  usingStore<T>(what: string, action: () => T): T {
    try {
      return action();
    } catch (error) {
      throw storeRefusal(error, what) ?? error;
    }
  }

  /** Runs `action` on the job history, answering a failing store as a refusal. */
  readHistory<T>(action: () => T): T {
    return this.usingStore("cannot read the job history", action);
  }

  /** A job's status, live or stored; not-found JOB_NOT_FOUND when there is no such job. */
  statusOf(id: string): JobStatus {
    return this.readHistory(() => this.registry.status(id)) ?? this.throwNotFound(id);
  }

  parseUuid(uuid: string): string {
    return parseUuid(uuid);
  }

  throwNotFound(uuid: string): never {
    throw new EngineError("not-found", REASON.JOB_NOT_FOUND, `uuid: no job ${uuid}`, "uuid");
  }
}
