// One backup job: its identity, its state machine (active → done | error |
// cancelled, exactly once), its counters and immutable snapshots of all
// that. The job is plain data plus an abort signal; running it is
// job-runner.ts's business, keeping it is job-registry.ts's.
//
// Revisions are stamped lazily: a change only marks the job dirty, and the
// next snapshot takes the next server-wide revision. So every status anyone
// sees (a watcher, a query, the store) carries a revision, changes that
// nobody looked at in between share one, and a job moving a chunk a
// millisecond does not burn a revision per chunk.
import type { ArchiveRef } from "../stores/archive-store.js";
import { RateMeter } from "./rate-meter.js";
import type { DeviceSource, DeviceSourceKind, DeviceStatus, JobState, JobStatus } from "./types.js";

/** The clocks and counters a job draws from (shared by the engine's jobs). */
export interface JobContext {
  /** Wall clock, Unix milliseconds: start, end and update times. */
  readonly now: () => number;
  /** Monotonic milliseconds: rate measurement. */
  readonly monotonic: () => number;
  /** The next server-wide revision. */
  readonly nextRevision: () => number;
}

export interface JobInit {
  readonly uuid: string;
  /** Final archive path. */
  readonly backupFile: string;
  /** The name of the store the archive is written to (a server's target, e.g. "local"). */
  readonly target: string;
  /** The store's reference of the archive being written: recovery removes or adopts only that object. */
  readonly pending: ArchiveRef;
  /** Where the archive will be, for people: a path or s3://bucket/key. */
  readonly archiveLocation: string;
  readonly format: string;
  readonly speedLimit: number;
  readonly requestId?: string;
  /** The canonical form of the request (see request-fingerprint.ts), kept with its request id. */
  readonly requestFingerprint?: string;
  /** In request order; dev_ids are 1..N in this order. */
  readonly devices: ReadonlyArray<JobDevice>;
  /** Each device's source as requested, in request order (kept in the job's record). */
  readonly sources: readonly DeviceSource[];
}

/** A device of a job as its status shows it. */
export interface JobDevice {
  readonly name: string;
  readonly size: number;
  readonly sourceKind: DeviceSourceKind;
  /** Where it is read from (see sourceLocation). */
  readonly source: string;
}

/** Who a file is, whatever its name: device, inode and birth time in ns ("0": unknown), as decimal strings. */
export interface FileIdentity {
  readonly dev: string;
  readonly ino: string;
  readonly born: string;
}

/** Who a finished archive was before stores (device, inode, size); old records hold it. */
export interface ArchiveIdentity {
  readonly dev: string;
  readonly ino: string;
  readonly size: number;
}

interface DeviceCounters {
  readonly name: string;
  readonly devId: number;
  readonly size: number;
  transferredBytes: number;
  zeroBytes: number;
  readonly sourceKind: DeviceSourceKind;
  readonly source: string;
  scratchBytes: number;
}

export type TerminalState = Exclude<JobState, "active">;

/** An active job's cached snapshot is rebuilt after this long, so rate and ETA stay current. */
const RATE_REFRESH_MS = 100;

export class Job {
  readonly uuid: string;
  readonly backupFile: string;
  readonly target: string;
  readonly pending: ArchiveRef;
  readonly archiveLocation: string;
  readonly format: string;
  readonly requestId: string | undefined;
  readonly requestFingerprint: string | undefined;
  readonly sources: readonly DeviceSource[];
  readonly startTime: Date;
  readonly totalBytes: number;
  private readonly context: JobContext;
  private speed: number;
  private currentState: JobState = "active";
  private errorMessage = "";
  private endTime: Date | undefined;
  private transferredBytes = 0;
  private zeroBytes = 0;
  private readonly devices: DeviceCounters[];
  private readonly meter: RateMeter;
  private committed: ArchiveRef | undefined;
  /** The archive bytes stored so far, while the target is open; then the final count. */
  private writtenBytes: () => number = () => 0;
  private readonly stopController = new AbortController();
  private stopReason = "";
  /** Something changed since the last snapshot: the next one takes a new revision. */
  private dirty = true;
  private changedAt: number;
  private revision = 0;
  private cached: JobStatus | undefined;
  private cachedAt = 0;
  private readonly finished: Promise<JobStatus>;
  private resolveFinished!: (status: JobStatus) => void;

  constructor(init: JobInit, context: JobContext) {
    this.uuid = init.uuid;
    this.backupFile = init.backupFile;
    this.target = init.target;
    this.pending = init.pending;
    this.archiveLocation = init.archiveLocation;
    this.format = init.format;
    this.requestId = init.requestId;
    this.requestFingerprint = init.requestFingerprint;
    this.sources = init.sources;
    this.speed = init.speedLimit;
    this.context = context;
    this.changedAt = context.now();
    this.startTime = new Date(this.changedAt);
    this.meter = new RateMeter(context.monotonic);
    this.devices = init.devices.map((device, index) => ({
      name: device.name,
      devId: index + 1,
      size: device.size,
      transferredBytes: 0,
      zeroBytes: 0,
      sourceKind: device.sourceKind,
      source: device.source,
      scratchBytes: 0,
    }));
    this.totalBytes = this.devices.reduce((sum, device) => sum + device.size, 0);
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve;
    });
  }

  get state(): JobState {
    return this.currentState;
  }

  get isActive(): boolean {
    return this.currentState === "active";
  }

  get speedLimit(): number {
    return this.speed;
  }

  /** The store's reference of the committed archive, once recorded. */
  get archive(): ArchiveRef | undefined {
    return this.committed;
  }

  /** Aborts when the job is asked to stop; the pipeline checks it between chunks and in waits. */
  get signal(): AbortSignal {
    return this.stopController.signal;
  }

  /** Why the job was asked to stop ("" when it was not); becomes the cancelled status's message. */
  get cancelReason(): string {
    return this.stopReason;
  }

  /** Asks the job to stop; the first reason wins. */
  requestCancel(reason: string): void {
    if (this.stopController.signal.aborted) return;
    this.stopReason = reason;
    this.stopController.abort(new Error(reason));
  }

  setSpeedLimit(bytesPerSecond: number): void {
    this.speed = bytesPerSecond;
    this.changed();
  }

  /** Adds processed bytes of device `deviceIndex` (0-based). */
  addProgress(deviceIndex: number, transferredBytes: number, zeroBytes: number): void {
    const device = this.devices[deviceIndex];
    if (device === undefined) throw new RangeError(`no device ${deviceIndex} in job ${this.uuid}`);
    device.transferredBytes += transferredBytes;
    device.zeroBytes += zeroBytes;
    this.transferredBytes += transferredBytes;
    this.zeroBytes += zeroBytes;
    this.meter.record(this.transferredBytes);
    this.changed();
  }

  /** Sets what the guest wrote meanwhile to device `deviceIndex`'s scratch overlay (qemu sources). */
  setScratchBytes(deviceIndex: number, scratchBytes: number): void {
    const device = this.devices[deviceIndex];
    if (device === undefined) throw new RangeError(`no device ${deviceIndex} in job ${this.uuid}`);
    if (device.scratchBytes === scratchBytes) return;
    device.scratchBytes = scratchBytes;
    this.changed();
  }

  /** Where the written (stored) byte count comes from while the archive is written. */
  countWrittenBytes(source: () => number): void {
    this.writtenBytes = source;
  }

  /** Records which object the committed archive is; call before finish("done"). */
  recordArchive(ref: ArchiveRef): void {
    this.committed = ref;
  }

  /**
   * Moves the job to its terminal state. Returns false (and changes nothing)
   * when it already ended.
   */
  finish(state: TerminalState, errorMessage = ""): boolean {
    if (this.currentState !== "active") return false;
    this.currentState = state;
    this.errorMessage = errorMessage;
    // The target is done with: keep its last count.
    const written = this.writtenBytes();
    this.writtenBytes = () => written;
    this.changed();
    this.endTime = new Date(this.changedAt);
    return true;
  }

  /** Resolves `whenFinished()`; called once the terminal status is published. */
  settle(): void {
    this.resolveFinished(this.snapshot());
  }

  /** The terminal status, once it has been published. */
  whenFinished(): Promise<JobStatus> {
    return this.finished;
  }

  /**
   * An immutable snapshot of the job now: the same object until something
   * changes (then with a new revision) or, while active, until its rate is
   * due to be measured again (same revision: the job itself did not change).
   */
  snapshot(): JobStatus {
    const monotonicNow = this.context.monotonic();
    if (this.dirty) {
      this.revision = this.context.nextRevision();
      this.dirty = false;
    } else if (this.cached !== undefined && (!this.isActive || monotonicNow - this.cachedAt < RATE_REFRESH_MS)) {
      return this.cached;
    }
    this.cached = this.build();
    this.cachedAt = monotonicNow;
    return this.cached;
  }

  private changed(): void {
    this.dirty = true;
    this.changedAt = this.context.now();
  }

  private build(): JobStatus {
    const devices: DeviceStatus[] = this.devices.map((device) => Object.freeze({ ...device }));
    const active = this.isActive;
    const rate = active ? this.meter.measuredRate() : 0;
    const remaining = this.totalBytes - this.transferredBytes;
    const etaMs = active && rate > 0 ? Math.round((remaining * 1000) / rate) : undefined;
    const status: JobStatus = {
      uuid: this.uuid,
      state: this.currentState,
      errorMessage: this.errorMessage,
      backupFile: this.backupFile,
      format: this.format,
      totalBytes: this.totalBytes,
      transferredBytes: this.transferredBytes,
      zeroBytes: this.zeroBytes,
      startTime: this.startTime,
      ...(this.endTime === undefined ? {} : { endTime: this.endTime }),
      speedLimit: this.speed,
      devices: Object.freeze(devices),
      rate,
      ...(etaMs === undefined ? {} : { etaMs }),
      revision: this.revision,
      updateTime: new Date(this.changedAt),
      ...(this.requestId === undefined ? {} : { requestId: this.requestId }),
      writtenBytes: this.writtenBytes(),
      archiveLocation: this.archiveLocation,
    };
    return Object.freeze(status);
  }
}
