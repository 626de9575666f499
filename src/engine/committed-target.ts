// The job runner closes the target and only needs to know that it worked;
// the job's record needs what the store committed (which object exactly, so
// that deleting the job later removes only that one). This wrapper keeps
// close()'s committed reference for run-lifecycle to record.
import type { BackupTarget } from "../drivers/driver.js";
import type { ArchiveRef } from "../stores/archive-store.js";

export class CommittedTarget implements BackupTarget {
  private readonly inner: BackupTarget;
  private ref: ArchiveRef | undefined;

  constructor(inner: BackupTarget) {
    this.inner = inner;
  }

  /** The store's committed reference once close() succeeded. */
  get committed(): ArchiveRef | undefined {
    return this.ref;
  }

  get pending(): ArchiveRef {
    return this.inner.pending;
  }

  get location(): string {
    return this.inner.location;
  }

  get bytesWritten(): number {
    return this.inner.bytesWritten;
  }

  registerConfig(name: string, data: Uint8Array): void {
    this.inner.registerConfig(name, data);
  }

  registerDevice(name: string, size: number): number {
    return this.inner.registerDevice(name, size);
  }

  writeCluster(devId: number, clusterNum: number, data: Uint8Array, storedMask: number): Promise<void> {
    return this.inner.writeCluster(devId, clusterNum, data, storedMask);
  }

  writeZeroClusters(devId: number, firstCluster: number, count: number): Promise<void> {
    return this.inner.writeZeroClusters(devId, firstCluster, count);
  }

  released(): Promise<void> {
    return this.inner.released();
  }

  completeDevice(devId: number): Promise<void> {
    return this.inner.completeDevice(devId);
  }

  async close(): Promise<ArchiveRef> {
    this.ref = await this.inner.close();
    return this.ref;
  }

  abort(): Promise<void> {
    return this.inner.abort();
  }
}
