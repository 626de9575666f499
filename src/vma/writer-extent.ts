// Collects the clusters of one extent by reference and turns them into the
// iovecs of a vectored write: the extent header, then the stored blocks.
import { BLOCK_SIZE, BLOCKS_PER_CLUSTER } from "./constants.js";
import { encodeExtentHeader, type ExtentSlot } from "./encode-extent.js";

export class ExtentBuilder {
  private slots: ExtentSlot[] = [];
  private blocks: Uint8Array[] = [];

  get slotCount(): number {
    return this.slots.length;
  }

  /** True when no slot stores a block: the extent is its header alone. */
  get isHeaderOnly(): boolean {
    return this.blocks.length === 0;
  }

  /**
   * Adds a cluster's slot and references its stored blocks in increasing bit
   * order. Adjacent blocks that are contiguous in the same ArrayBuffer become
   * one iovec, so a fully stored cluster (or a run of consecutive clusters cut
   * from one read buffer) costs a single iovec and no copy.
   */
  add(devId: number, clusterNum: number, cluster: Uint8Array, mask: number): void {
    this.slots.push({ devId, clusterNum, mask });
    let block = 0;
    while (block < BLOCKS_PER_CLUSTER) {
      if ((mask & (1 << block)) === 0) {
        block += 1;
        continue;
      }
      let end = block + 1;
      while (end < BLOCKS_PER_CLUSTER && (mask & (1 << end)) !== 0) end += 1;
      this.reference(cluster, block * BLOCK_SIZE, end * BLOCK_SIZE);
      block = end;
    }
  }

  /** Returns the finished extent as iovecs and starts an empty one. */
  take(uuid: Uint8Array): Uint8Array[] {
    const chunks = [encodeExtentHeader(uuid, this.slots)];
    for (const block of this.blocks) chunks.push(block);
    this.slots = [];
    this.blocks = [];
    return chunks;
  }

  private reference(cluster: Uint8Array, start: number, end: number): void {
    const offset = cluster.byteOffset + start;
    const last = this.blocks.at(-1);
    if (last !== undefined && last.buffer === cluster.buffer && last.byteOffset + last.byteLength === offset) {
      this.blocks[this.blocks.length - 1] = new Uint8Array(last.buffer, last.byteOffset, last.byteLength + end - start);
    } else {
      this.blocks.push(new Uint8Array(cluster.buffer, offset, end - start));
    }
  }
}
