// The VMA writer on top of any store's upload (src/stores): the cluster
// calls of a BackupTarget, with the bytes going wherever the upload puts
// them (a local file, an S3 multipart upload, through compression), and
// closing yields the store's committed reference.
import { parse as parseUuid } from "uuid";
import type { ArchiveRef, ArchiveUpload } from "../stores/archive-store.js";
import { VmaWriter } from "../vma/writer.js";
import { withArchiveLimitErrors } from "./archive-limits.js";
import type { BackupTarget } from "./driver.js";

export interface VmaStoreTargetOptions {
  /** The job uuid (canonical string form); becomes the archive's uuid. */
  readonly uuid: string;
  /** Fixed header ctime (Unix seconds), for byte-identical archives in tests. */
  readonly ctime?: number;
}

/** One VMA archive streamed into `upload`. Call order as BackupTarget; close() commits. */
export class VmaStoreTarget implements BackupTarget {
  private readonly writer: VmaWriter;
  private readonly upload: ArchiveUpload;

  constructor(upload: ArchiveUpload, options: VmaStoreTargetOptions) {
    this.writer = new VmaWriter(upload, {
      uuid: parseUuid(options.uuid),
      ...(options.ctime === undefined ? {} : { ctime: options.ctime }),
    });
    this.upload = upload;
  }

  /** What the job record keeps while the archive is written. */
  get pending(): ArchiveRef {
    return this.upload.pending;
  }

  get location(): string {
    return this.upload.location;
  }

  /** Archive bytes as stored (compressed, when compressing). */
  get bytesWritten(): number {
    return this.upload.bytesWritten;
  }

  /** ArchiveLimitError when the format cannot hold it. */
  registerConfig(name: string, data: Uint8Array): void {
    withArchiveLimitErrors(() => this.writer.addConfig(name, data));
  }

  registerDevice(name: string, size: number): number {
    return withArchiveLimitErrors(() => this.writer.addDevice(name, size));
  }

  writeCluster(devId: number, clusterNum: number, data: Uint8Array, storedMask: number): Promise<void> {
    return this.writer.writeCluster(devId, clusterNum, data, storedMask);
  }

  writeZeroClusters(devId: number, firstCluster: number, count: number): Promise<void> {
    return this.writer.writeZeroClusters(devId, firstCluster, count);
  }

  released(): Promise<void> {
    return this.writer.whenReleased();
  }

  async completeDevice(devId: number): Promise<void> {
    this.writer.completeDevice(devId);
  }

  /** Writes the rest, then commits: resolves with the committed reference. */
  async close(): Promise<ArchiveRef> {
    await this.writer.finish();
    return this.upload.commit();
  }

  async abort(): Promise<void> {
    await this.writer.abort();
    await this.upload.abort();
  }
}
