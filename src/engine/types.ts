// Plain types of the job engine. The server maps them to and from protobuf
// messages; nothing here knows about gRPC.
import type { Compression } from "../stores/compressed-upload.js";
import type { S3ClientOptions } from "../stores/s3/s3-client.js";
import type { TargetSpec } from "../stores/store-targets.js";

/** How an archive is compressed: "none", "zstd" or "gzip". */
export type ArchiveCompression = Compression;

export type JobState = "active" | "done" | "error" | "cancelled";

export const JOB_STATES: readonly JobState[] = ["active", "done", "error", "cancelled"];

export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(["done", "error", "cancelled"]);

/** Image formats an image source may name; the client names it, the server never probes. */
export const IMAGE_FORMATS = ["raw", "qcow2", "vmdk", "vdi", "vhdx", "qed"] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

/** Where a device is read from. */
export type DeviceSource =
  /** A raw file or block device under a source root. */
  | { readonly kind: "path"; readonly path: string }
  /** A disk image under a source root, read through a private qemu-storage-daemon; `format` is checked by validation. */
  | { readonly kind: "image"; readonly path: string; readonly format: string }
  /** An NBD export another program serves, e.g. "nbd+unix:///export?socket=/run/x.sock". */
  | { readonly kind: "nbd"; readonly uri: string }
  /** A drive of a running QEMU, read at the job's point in time. */
  | { readonly kind: "qemu"; readonly qmpSocket: string; readonly drive: string };

export type DeviceSourceKind = DeviceSource["kind"];

export const DEVICE_SOURCE_KINDS: readonly DeviceSourceKind[] = ["path", "image", "nbd", "qemu"];

export interface DeviceSpec {
  readonly name: string;
  readonly source: DeviceSource;
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
  /**
   * Idempotency key (at most 128 bytes of UTF-8; "" or undefined = none):
   * a start with a request id already used within 24 hours starts nothing
   * and returns that job's current status.
   */
  readonly requestId?: string;
  /** How the archive is compressed; undefined: as backupFile's suffix says (a suffix saying otherwise is refused). */
  readonly compression?: Compression;
  /** The store's name (the server's targets); undefined: "local", the backup dir. */
  readonly target?: string;
  /** Proxmox VMID: with an empty backupFile the archive gets vzdump's name. */
  readonly vmid?: number;
}

export interface DeviceStatus {
  readonly name: string;
  readonly devId: number;
  readonly size: number;
  readonly transferredBytes: number;
  readonly zeroBytes: number;
  /** What the device is read from. */
  readonly sourceKind: DeviceSourceKind;
  /** Where, as the request gave it (see sourceLocation). */
  readonly source: string;
  /** qemu sources: bytes the guest wrote since the point in time; 0 otherwise. */
  readonly scratchBytes: number;
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
  /** Source bytes per second measured over the last second (RATE_WINDOW_MS); 0 when not active. */
  readonly rate: number;
  /** Remaining bytes at `rate`, in ms; undefined when unknown (no rate) or not active. */
  readonly etaMs?: number;
  /**
   * Server-wide sequence, persisted: every change of any job takes a new,
   * higher value, so it increases with every change of this job and orders
   * changes across jobs (an all-jobs watcher resumes after it).
   */
  readonly revision: number;
  /** When the job last changed. */
  readonly updateTime: Date;
  /** The request id the job was started with, if any. */
  readonly requestId?: string;
  /** Archive bytes written so far, as stored (after compression); undefined in records written before stores. */
  readonly writtenBytes?: number;
  /** Where the archive is, for people: a path or s3://bucket/key; undefined in records written before stores. */
  readonly archiveLocation?: string;
}

export interface EngineOptions {
  /** Where archives go; relative backup_file names resolve here. */
  readonly backupDir: string;
  /** Directories sources may be read from. */
  readonly sourceRoots: readonly string[];
  /** Minimum time between two progress updates of one job to a watcher. */
  readonly progressIntervalMs: number;
  /** Where the job database lives: `${stateDir}/jobs.sqlite`. */
  readonly stateDir: string;
  /**
   * Where nbd sources may connect: unix-socket directories (absolute paths)
   * and TCP "host" or "host:port" patterns. Empty or undefined: nbd sources
   * are refused.
   */
  readonly nbdAllow?: readonly string[];
  /** Directories QMP sockets of qemu sources may lie in. Empty or undefined: qemu sources are refused. */
  readonly qmpRoots?: readonly string[];
  /** Where qemu sources keep their scratch overlays (default `${stateDir}/scratch`). */
  readonly scratchDir?: string;
  /** S3 targets besides the backup dir ("local"), by name (--target NAME=s3://bucket/prefix). */
  readonly targets?: readonly TargetSpec[];
  /** How to reach S3, for every S3 target. */
  readonly s3?: S3ClientOptions;
}

export interface ListQuery {
  /** 0 means 100; larger than 1000 means 1000. */
  readonly pageSize: number;
  /** nextPageToken of the previous page; undefined or "" for the first. */
  readonly pageToken?: string | undefined;
  /** Only jobs in these states; empty or undefined means every state. */
  readonly states?: readonly JobState[];
}

export interface ListPage {
  /** Newest first; active jobs with their live counters. */
  readonly statuses: JobStatus[];
  /** Undefined on the last page. */
  readonly nextPageToken?: string;
}

export interface DeleteOptions {
  /** Also remove the archive the job wrote (only a finished, successful job has one). */
  readonly deleteArchive: boolean;
}

export interface WatchOptions {
  /**
   * Resume after this revision: only statuses with a higher revision are
   * sent. 0 or undefined: no resume (the current status of the job, or of
   * every active job).
   */
  readonly afterRevision?: number;
}
