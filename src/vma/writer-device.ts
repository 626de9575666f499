// Per-device bookkeeping of the writer: which clusters were written (one bit
// each), and the rules a cluster must follow to be readable by Proxmox.
import { BLOCK_SIZE, BLOCKS_PER_CLUSTER, CLUSTER_SIZE } from "./constants.js";
import { VmaUsageError } from "./writer-errors.js";

const FULL_MASK = (1 << BLOCKS_PER_CLUSTER) - 1;

export class WriterDevice {
  readonly devId: number;
  readonly name: string;
  readonly size: number;
  readonly clusterCount: number;
  private readonly written: Uint8Array;
  private writtenCount = 0;
  private completed = false;

  constructor(devId: number, name: string, size: number) {
    this.devId = devId;
    this.name = name;
    this.size = size;
    this.clusterCount = Math.ceil(size / CLUSTER_SIZE);
    this.written = new Uint8Array(Math.ceil(this.clusterCount / 8));
  }

  get isComplete(): boolean {
    return this.completed;
  }

  /** Checks a cluster against the device and marks it written; throws VmaUsageError if it may not be. */
  recordCluster(clusterNum: number, mask: number): void {
    this.checkCluster(clusterNum);
    if (!Number.isInteger(mask) || mask < 0 || mask > FULL_MASK) {
      throw new VmaUsageError(`mask ${mask} of cluster ${clusterNum} of ${this.label()} is not a 16-bit block mask`);
    }
    const allowed = this.allowedMask(clusterNum);
    if ((mask & ~allowed) !== 0) {
      throw new VmaUsageError(
        `mask ${hex(mask)} of cluster ${clusterNum} sets blocks past the end of ${this.label()} (size ` +
          `${this.size}); allowed bits are ${hex(allowed)}`,
      );
    }
    const byte = clusterNum >>> 3;
    const bit = 1 << (clusterNum & 7);
    if ((this.written[byte]! & bit) !== 0) {
      throw new VmaUsageError(`cluster ${clusterNum} of ${this.label()} was already written`);
    }
    this.written[byte]! |= bit;
    this.writtenCount += 1;
  }

  /**
   * What recordCluster does for `count` clusters from `firstCluster` with
   * mask 0 (always allowed), checking them all before marking any.
   */
  recordZeroRun(firstCluster: number, count: number): void {
    if (count === 0) return;
    const last = firstCluster + count - 1;
    for (const clusterNum of [firstCluster, last]) this.checkCluster(clusterNum);
    for (let clusterNum = firstCluster; clusterNum <= last; clusterNum++) {
      if ((this.written[clusterNum >>> 3]! & (1 << (clusterNum & 7))) !== 0) {
        throw new VmaUsageError(`cluster ${clusterNum} of ${this.label()} was already written`);
      }
    }
    for (let clusterNum = firstCluster; clusterNum <= last; clusterNum++) {
      this.written[clusterNum >>> 3]! |= 1 << (clusterNum & 7);
    }
    this.writtenCount += count;
  }

  /** Marks the device complete; throws naming the first cluster that was never written. */
  complete(): void {
    if (this.completed) {
      throw new VmaUsageError(`${this.label()} was already completed`);
    }
    if (this.writtenCount !== this.clusterCount) {
      const missing = this.clusterCount - this.writtenCount;
      throw new VmaUsageError(
        `${this.label()} is incomplete: cluster ${this.firstMissingCluster()} was not written (${missing} of ` +
          `${this.clusterCount} missing)`,
      );
    }
    this.completed = true;
  }

  label(): string {
    return `device "${this.name}" (dev_id ${this.devId})`;
  }

  /** Throws unless cluster `clusterNum` may still be written (its bit aside). */
  private checkCluster(clusterNum: number): void {
    if (this.completed) {
      throw new VmaUsageError(`${this.label()} was already completed; cluster ${clusterNum} comes too late`);
    }
    if (!Number.isInteger(clusterNum) || clusterNum < 0 || clusterNum >= this.clusterCount) {
      throw new VmaUsageError(
        `cluster ${clusterNum} is outside ${this.label()}, which has clusters 0..${this.clusterCount - 1}`,
      );
    }
  }

  /** Blocks that start inside the device; the last partial cluster allows fewer. */
  private allowedMask(clusterNum: number): number {
    const bytesInCluster = this.size - clusterNum * CLUSTER_SIZE;
    if (bytesInCluster >= CLUSTER_SIZE) return FULL_MASK;
    return (1 << Math.ceil(bytesInCluster / BLOCK_SIZE)) - 1;
  }

  private firstMissingCluster(): number {
    // Only runs on the error path, so a plain scan is fine.
    for (let byte = 0; byte < this.written.length; byte++) {
      const bits = this.written[byte]!;
      if (bits === 0xff) continue;
      for (let bit = 0; bit < 8; bit++) {
        if ((bits & (1 << bit)) === 0) return byte * 8 + bit;
      }
    }
    throw new Error(`${this.label()}: no missing cluster found although counts differ`);
  }
}

function hex(mask: number): string {
  return `0x${mask.toString(16).padStart(4, "0")}`;
}
