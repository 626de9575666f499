// Plain types of the job engine. The server maps them to and from protobuf
// messages; nothing here knows about gRPC.

export type JobState = "active" | "done" | "error" | "cancelled";

export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(["done", "error", "cancelled"]);

export interface DeviceSpec {
  readonly name: string;
  readonly path: string;
}

export interface ConfigSpec {
  readonly name: string;
  readonly data: Uint8Array;
}

/** A backup request as the engine sees it. */
export interface BackupSpec {
  /** As given by the client: relative to the backup dir, or absolute. */
  readonly backupFile: string;
  /** Driver format name; "vma" is the only one so far. */
  readonly format: string;
  readonly devices: readonly DeviceSpec[];
  readonly configs: readonly ConfigSpec[];
  /** Bytes per second of source data; 0 = unlimited. */
  readonly speedLimit: number;
}

export interface DeviceStatus {
  readonly name: string;
  readonly devId: number;
  readonly size: number;
  readonly transferredBytes: number;
  readonly zeroBytes: number;
}

/** An immutable snapshot of a job. */
export interface JobStatus {
  readonly uuid: string;
  readonly state: JobState;
  readonly errorMessage: string;
  /** Resolved absolute path of the final archive. */
  readonly backupFile: string;
  readonly format: string;
  readonly totalBytes: number;
  readonly transferredBytes: number;
  readonly zeroBytes: number;
  readonly startTime: Date;
  readonly endTime?: Date;
  readonly speedLimit: number;
  readonly devices: readonly DeviceStatus[];
}

export interface EngineOptions {
  /** Where archives go; relative backup_file names resolve here. */
  readonly backupDir: string;
  /** Directories sources may be read from. */
  readonly sourceRoots: readonly string[];
  /** Minimum time between two progress updates of one job to a watcher. */
  readonly progressIntervalMs: number;
}
