// Fans job status out to watchers. State changes go out at once; progress
// at most once per interval per job (a trailing timer publishes the latest
// counters). A watcher that reads slowly never slows a job and never makes
// us buffer without bound: its queue holds at most one pending progress
// status per job (a newer one replaces it in place) besides the state
// changes, which are never dropped.
import { RevisionFilter } from "./revision-filter.js";
import type { JobStatus } from "./types.js";
import { TERMINAL_STATES } from "./types.js";

/**
 * A stream of statuses; close() ends it at once and frees it. Read it by
 * iterating, or with poll() whenever onReadable's listener is called: the
 * latter costs no promise per status, which counts when one status goes to
 * thousands of watchers.
 */
export interface StatusSubscription extends AsyncIterable<JobStatus> {
  close(): void;
  /** Statuses queued and not yet read (bounded: see the top of status-hub.ts). */
  readonly backlog: number;
  /** The next queued status, or undefined when none is queued (then `done` tells whether more can come). */
  poll(): JobStatus | undefined;
  /** Nothing is queued and nothing more will come. */
  readonly done: boolean;
  /**
   * Calls `listener` whenever a status is queued or the subscription ends
   * (for poll()). It runs in the publisher's call: it must not throw.
   */
  onReadable(listener: () => void): void;
}

interface QueueEntry {
  /** undefined once superseded by a later state change of the same job. */
  status: JobStatus | undefined;
  readonly progress: boolean;
}

type Waiter = (result: IteratorResult<JobStatus>) => void;

const DONE: IteratorResult<JobStatus> = { done: true, value: undefined };
/** Dequeued entries are dropped from the array in batches of this size. */
const COMPACT_AFTER = 256;

class Subscription implements StatusSubscription {
  /** The job followed, or undefined for every job. */
  readonly uuid: string | undefined;
  private readonly detach: (subscription: Subscription) => void;
  private queue: QueueEntry[] = [];
  private head = 0;
  private readonly pendingProgress = new Map<string, QueueEntry>();
  /**
   * Drops a status this watcher already has (a snapshot published again
   * after it came in as the initial status); a job is forgotten after its
   * terminal status.
   */
  private readonly revisions = new RevisionFilter();
  private readonly waiters: Waiter[] = [];
  /** open: receiving; ending: delivers what is queued, then ends; closed: ended. */
  private phase: "open" | "ending" | "closed" = "open";
  private listener: (() => void) | undefined;

  constructor(uuid: string | undefined, detach: (subscription: Subscription) => void) {
    this.uuid = uuid;
    this.detach = detach;
  }

  get backlog(): number {
    let count = 0;
    for (let index = this.head; index < this.queue.length; index++) {
      if (this.queue[index]?.status !== undefined) count++;
    }
    return count;
  }

  push(status: JobStatus, progress: boolean): void {
    if (this.phase !== "open") return;
    if (!this.revisions.isNew(status)) return;
    const terminal = !progress && TERMINAL_STATES.has(status.state);
    // Nothing follows a terminal status, so its entry can go (this bounds the map).
    if (terminal) this.revisions.forget(status.uuid);
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      // Someone is waiting, so the queue is empty: hand it over directly.
      waiter({ done: false, value: status });
    } else if (progress) {
      const pending = this.pendingProgress.get(status.uuid);
      if (pending !== undefined) {
        pending.status = status;
      } else {
        const entry: QueueEntry = { status, progress: true };
        this.queue.push(entry);
        this.pendingProgress.set(status.uuid, entry);
      }
    } else {
      // A state change carries the latest counters: older progress is moot.
      const pending = this.pendingProgress.get(status.uuid);
      if (pending !== undefined) {
        pending.status = undefined;
        this.pendingProgress.delete(status.uuid);
      }
      this.queue.push({ status, progress: false });
    }
    if (terminal && this.uuid !== undefined) this.end();
    if (waiter === undefined) this.listener?.();
  }

  /** Stops receiving; what is queued is still delivered, then the stream ends. */
  end(): void {
    if (this.phase !== "open") return;
    this.phase = "ending";
    this.detach(this);
    if (this.head === this.queue.length) this.finishAndNotify();
  }

  close(): void {
    if (this.phase === "closed") return;
    if (this.phase === "open") this.detach(this);
    this.finishAndNotify();
  }

  get done(): boolean {
    return this.phase === "closed";
  }

  onReadable(listener: () => void): void {
    this.listener = listener;
  }

  poll(): JobStatus | undefined {
    const entry = this.dequeue();
    if (entry !== undefined) {
      if (this.phase === "ending" && this.head === this.queue.length) this.finish();
      return entry;
    }
    if (this.phase !== "open") this.finish();
    return undefined;
  }

  next(): Promise<IteratorResult<JobStatus>> {
    const entry = this.poll();
    if (entry !== undefined) return Promise.resolve({ done: false, value: entry });
    if (this.phase === "closed") return Promise.resolve(DONE);
    return new Promise<IteratorResult<JobStatus>>((resolve) => this.waiters.push(resolve));
  }

  [Symbol.asyncIterator](): AsyncIterator<JobStatus> {
    return {
      next: () => this.next(),
      return: () => {
        this.close();
        return Promise.resolve(DONE);
      },
    };
  }

  private dequeue(): JobStatus | undefined {
    while (this.head < this.queue.length) {
      const entry = this.queue[this.head++] as QueueEntry;
      const status = entry.status;
      if (status === undefined) continue;
      if (entry.progress) this.pendingProgress.delete(status.uuid);
      this.compact();
      return status;
    }
    this.compact();
    return undefined;
  }

  private compact(): void {
    if (this.head === this.queue.length) {
      // Emptied in place: a watcher drains its queue on every change.
      this.queue.length = 0;
      this.head = 0;
    } else if (this.head >= COMPACT_AFTER) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private finish(): void {
    this.phase = "closed";
    this.listener = undefined;
    this.queue = [];
    this.head = 0;
    this.pendingProgress.clear();
    this.revisions.clear();
    for (const waiter of this.waiters.splice(0)) waiter(DONE);
  }

  /** Tells a polling reader that the subscription ended (not from within its own poll()). */
  private finishAndNotify(): void {
    if (this.phase === "closed") return;
    const listener = this.listener;
    this.finish();
    listener?.();
  }
}

interface ProgressThrottle {
  lastPublishedAt: number;
  timer: NodeJS.Timeout | undefined;
  snapshot: () => JobStatus;
}

export class StatusHub {
  private readonly progressIntervalMs: number;
  private readonly clock: () => number;
  private readonly allJobs = new Set<Subscription>();
  private readonly byJob = new Map<string, Set<Subscription>>();
  /** Jobs that are active, with their progress throttle. */
  private readonly throttles = new Map<string, ProgressThrottle>();
  /** After endAll(): new subscriptions get their initial statuses and end. */
  private ended = false;

  constructor(progressIntervalMs: number, clock: () => number = () => performance.now()) {
    this.progressIntervalMs = progressIntervalMs;
    this.clock = clock;
  }

  /**
   * A subscription to one job (`uuid`) or to every job (undefined) that
   * first yields `initial`. A one-job subscription ends after that job's
   * terminal status (at once when `initial` holds it); after endAll() every
   * new subscription ends after `initial`.
   */
  subscribe(uuid: string | undefined, initial: readonly JobStatus[]): StatusSubscription {
    const subscription = new Subscription(uuid, (detached) => this.detach(detached));
    if (uuid === undefined) {
      this.allJobs.add(subscription);
    } else {
      let watchers = this.byJob.get(uuid);
      if (watchers === undefined) {
        watchers = new Set();
        this.byJob.set(uuid, watchers);
      }
      watchers.add(subscription);
    }
    for (const status of initial) subscription.push(status, false);
    if (this.ended) subscription.end();
    return subscription;
  }

  /** A subscription that has ended: it yields nothing. */
  endedSubscription(): StatusSubscription {
    const subscription = new Subscription(undefined, () => undefined);
    subscription.close();
    return subscription;
  }

  /** Publishes a state change (a job started or ended) to every watcher at once. */
  publishState(status: JobStatus): void {
    const throttle = this.throttles.get(status.uuid);
    if (TERMINAL_STATES.has(status.state)) {
      if (throttle !== undefined) clearTimeout(throttle.timer);
      this.throttles.delete(status.uuid);
    } else if (throttle === undefined) {
      this.throttles.set(status.uuid, { lastPublishedAt: this.clock(), timer: undefined, snapshot: () => status });
    } else {
      throttle.lastPublishedAt = this.clock();
    }
    this.deliver(status, false);
  }

  /**
   * Notes that an active job's counters changed. Publishes `snapshot()` now
   * when the job's last publication is an interval old, else once the
   * interval is over, with the counters of that moment.
   */
  publishProgress(uuid: string, snapshot: () => JobStatus): void {
    const throttle = this.throttles.get(uuid);
    if (throttle === undefined) return; // not active (or not announced yet)
    throttle.snapshot = snapshot;
    if (throttle.timer !== undefined) return;
    const wait = throttle.lastPublishedAt + this.progressIntervalMs - this.clock();
    if (wait <= 0) {
      this.publishThrottled(throttle);
      return;
    }
    throttle.timer = setTimeout(() => {
      throttle.timer = undefined;
      this.publishThrottled(throttle);
    }, wait);
    throttle.timer.unref();
  }

  /**
   * Publishes a change of an active job that is not progress (a new speed
   * limit) at once. Like progress, a slow reader keeps only the latest; it
   * includes the counters, so a trailing progress publication is moot.
   */
  publishNow(status: JobStatus): void {
    const throttle = this.throttles.get(status.uuid);
    if (throttle === undefined) return; // not active (or not announced yet)
    clearTimeout(throttle.timer);
    throttle.timer = undefined;
    throttle.lastPublishedAt = this.clock();
    this.deliver(status, true);
  }

  /** Ends every subscription after what it has queued, now and later (on shutdown). */
  endAll(): void {
    this.ended = true;
    for (const subscription of [...this.allJobs]) subscription.end();
    for (const watchers of [...this.byJob.values()]) {
      for (const subscription of [...watchers]) subscription.end();
    }
  }

  /** Number of open subscriptions. */
  get subscriberCount(): number {
    let count = this.allJobs.size;
    for (const watchers of this.byJob.values()) count += watchers.size;
    return count;
  }

  private publishThrottled(throttle: ProgressThrottle): void {
    throttle.lastPublishedAt = this.clock();
    this.deliver(throttle.snapshot(), true);
  }

  private deliver(status: JobStatus, progress: boolean): void {
    const watchers = this.byJob.get(status.uuid);
    if (watchers !== undefined) {
      for (const subscription of [...watchers]) subscription.push(status, progress);
    }
    for (const subscription of this.allJobs) subscription.push(status, progress);
  }

  private detach(subscription: Subscription): void {
    if (subscription.uuid === undefined) {
      this.allJobs.delete(subscription);
      return;
    }
    const watchers = this.byJob.get(subscription.uuid);
    if (watchers === undefined) return;
    watchers.delete(subscription);
    if (watchers.size === 0) this.byJob.delete(subscription.uuid);
  }
}
