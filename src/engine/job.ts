// One backup job: its identity, its state machine (active → done | error |
// cancelled, exactly once), its counters and immutable snapshots of all
// that. The job is plain data plus an abort signal; running it is
// job-runner.ts's business.
import type { DeviceStatus, JobState, JobStatus } from "./types.js";

export interface JobInit {
  readonly uuid: string;
  /** Final archive path. */
  readonly backupFile: string;
  readonly format: string;
  readonly speedLimit: number;
  /** In request order; dev_ids are 1..N in this order. */
  readonly devices: ReadonlyArray<{ readonly name: string; readonly size: number }>;
}

interface DeviceCounters {
  readonly name: string;
  readonly devId: number;
  readonly size: number;
  transferredBytes: number;
  zeroBytes: number;
}

export type TerminalState = Exclude<JobState, "active">;

export class Job {
  readonly uuid: string;
  readonly backupFile: string;
  readonly format: string;
  readonly startTime: Date;
  readonly totalBytes: number;
  private speed: number;
  private currentState: JobState = "active";
  private errorMessage = "";
  private endTime: Date | undefined;
  private transferredBytes = 0;
  private zeroBytes = 0;
  private readonly devices: DeviceCounters[];
  private readonly stopController = new AbortController();
  private stopReason = "";
  private cached: JobStatus | undefined;
  private readonly finished: Promise<JobStatus>;
  private resolveFinished!: (status: JobStatus) => void;

  constructor(init: JobInit) {
    this.uuid = init.uuid;
    this.backupFile = init.backupFile;
    this.format = init.format;
    this.speed = init.speedLimit;
    this.startTime = new Date();
    this.devices = init.devices.map((device, index) => ({
      name: device.name,
      devId: index + 1,
      size: device.size,
      transferredBytes: 0,
      zeroBytes: 0,
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
    this.cached = undefined;
  }

  /** Adds processed bytes of device `deviceIndex` (0-based). */
  addProgress(deviceIndex: number, transferredBytes: number, zeroBytes: number): void {
    const device = this.devices[deviceIndex];
    if (device === undefined) throw new RangeError(`no device ${deviceIndex} in job ${this.uuid}`);
    device.transferredBytes += transferredBytes;
    device.zeroBytes += zeroBytes;
    this.transferredBytes += transferredBytes;
    this.zeroBytes += zeroBytes;
    this.cached = undefined;
  }

  /**
   * Moves the job to its terminal state. Returns false (and changes nothing)
   * when it already ended.
   */
  finish(state: TerminalState, errorMessage = ""): boolean {
    if (this.currentState !== "active") return false;
    this.currentState = state;
    this.errorMessage = errorMessage;
    this.endTime = new Date();
    this.cached = undefined;
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

  /** An immutable snapshot of the job now (the same object until something changes). */
  snapshot(): JobStatus {
    if (this.cached === undefined) {
      const devices: DeviceStatus[] = this.devices.map((device) => Object.freeze({ ...device }));
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
      };
      this.cached = Object.freeze(status);
    }
    return this.cached;
  }
}
