// The cluster calls every VMA target shares: a BackupTarget's writing side
// on one VmaWriter. Targets differ only in where the bytes go and how the
// archive is committed or aborted (vma-driver.ts: an archive file;
// vma-store-target.ts: any store's upload).
import type { VmaWriter } from "../vma/writer.js";
import { withArchiveLimitErrors } from "./archive-limits.js";

export abstract class VmaWriterTarget {
  protected readonly writer: VmaWriter;

  protected constructor(writer: VmaWriter) {
    this.writer = writer;
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
}
