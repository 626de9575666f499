// The contract between the job engine and an archive format. The engine
// reads devices and finds zero blocks; a driver only lays clusters out in its
// format. Drivers know nothing about jobs, policies or gRPC.
import type { ArchiveRef, ArchiveUpload } from "../stores/archive-store.js";

/** What a job will put in the archive, for checking format limits up front. */
export interface ArchivePlan {
  readonly configs: ReadonlyArray<{ readonly name: string; readonly size: number }>;
  readonly devices: ReadonlyArray<{ readonly name: string; readonly size: number }>;
}

/** Thrown by checkPlan when a plan does not fit the format. */
export class ArchiveLimitError extends Error {
  /** The request field at fault, e.g. "configs[3].data" or "devices". */
  readonly field: string;

  constructor(field: string, message: string) {
    super(message);
    this.name = "ArchiveLimitError";
    this.field = field;
  }
}

export interface BackupDriver {
  /** Format name, e.g. "vma". */
  readonly format: string;
  /** Suffix the final archive name must end with, e.g. ".vma". */
  readonly fileSuffix: string;
  /** Throws ArchiveLimitError when the plan cannot be stored in this format. */
  checkPlan(plan: ArchivePlan): void;
  /**
   * The archive written into a store's upload (src/stores), which the
   * target commits on close() or aborts.
   */
  openUpload(upload: ArchiveUpload, options: UploadTargetOptions): BackupTarget;
}

export interface UploadTargetOptions {
  /** The job uuid (canonical string form); becomes the archive's uuid. */
  readonly uuid: string;
}

/** The cluster calls every target takes, whatever keeps its bytes. */
export interface ArchiveWriter {
  registerConfig(name: string, data: Uint8Array): void;
  /** Returns the device id (1, 2, ... in registration order). */
  registerDevice(name: string, size: number): number;
  /**
   * Stores one cluster. `data` holds the cluster's bytes (CLUSTER_SIZE long,
   * zero-filled past the device end); bit j of `storedMask` is set when 4 KiB
   * block j is not all zeros and must be stored. The target may keep a
   * reference to `data` until the returned promise settles, and longer until
   * close(); callers must not reuse the memory. The promise settles when the
   * target is ready for more (back-pressure), not necessarily when written.
   */
  writeCluster(devId: number, clusterNum: number, data: Uint8Array, storedMask: number): Promise<void>;
  /**
   * Stores `count` clusters from `firstCluster` on that read as all zeros,
   * as writeCluster with an all-zero cluster and mask 0 would, at a fraction
   * of the cost (the holes of sparse sources).
   */
  writeZeroClusters(devId: number, firstCluster: number, count: number): Promise<void>;
  /**
   * Resolves once the target no longer references the data of any cluster
   * passed to writeCluster so far, so the caller may reuse that memory.
   * Clusters still in a partly filled unit of the format (a VMA extent) are
   * released only after later clusters, close() or abort() write it out.
   */
  released(): Promise<void>;
  /** All clusters of the device were written. */
  completeDevice(devId: number): Promise<void>;
  /** Stops writing and removes what was written. Safe to call more than once. */
  abort(): Promise<void>;
}

/**
 * One archive being written into a store. Call order: registerConfig*
 * registerDevice+ (writeCluster* completeDevice)+ close, or abort at any point.
 */
export interface BackupTarget extends ArchiveWriter {
  /** The store's reference of the object being written: kept in the job record before the first write. */
  readonly pending: ArchiveRef;
  /** Where the archive will be, for people: a path or s3://bucket/key. */
  readonly location: string;
  /** Archive bytes as stored so far (compressed, when compressing). */
  readonly bytesWritten: number;
  /** Writes the rest and commits: resolves with the store's committed reference. */
  close(): Promise<ArchiveRef>;
}
