// Zero detection for one cluster: which 4 KiB blocks hold data (the stored
// mask) and how many bytes of the device were found to be zero. Long runs
// of bytes are compared natively (Buffer#compare, memcmp): one call for a
// whole cluster first, as most clusters are all zero or all data. A native
// call costs more than the first bytes of a data block do, so each block's
// first PEEK_BYTES are read in JS and the block is compared natively only
// when they are zero (bench/zero-detection.ts measured the options).
// Blocks and clusters are the format's (src/vma/constants.ts): a cluster's
// mask has one bit per block.
import { BLOCK_SIZE, BLOCKS_PER_CLUSTER, CLUSTER_SIZE } from "../vma/constants.js";

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);
const ZERO_CLUSTER = Buffer.alloc(CLUSTER_SIZE);
/** Random data differs from zero within its first bytes almost always. */
const PEEK_BYTES = 16;

export interface ClusterScan {
  /** Bit j set: block j is not all zeros and must be stored. */
  readonly mask: number;
  /** Device bytes in all-zero blocks (only the in-device part of a straddling block). */
  readonly zeroBytes: number;
}

const ALL_ZERO_CLUSTER: ClusterScan = { mask: 0, zeroBytes: CLUSTER_SIZE };

/**
 * Scans the cluster at `buffer[offset, offset + CLUSTER_SIZE)`, of which the
 * first `deviceBytes` (1..CLUSTER_SIZE) belong to the device. The bytes
 * after them must already be zero: a block wholly past the device end then
 * gets mask bit 0, and a block straddling the end is judged on its device
 * bytes alone.
 */
export function scanCluster(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  if (deviceBytes === CLUSTER_SIZE && ZERO_CLUSTER.compare(buffer, offset, offset + CLUSTER_SIZE) === 0) {
    return ALL_ZERO_CLUSTER;
  }
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const start = offset + blockStart;
    if (isZeroBlock(buffer, start)) {
      zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    } else {
      mask |= 1 << block;
    }
  }
  return { mask, zeroBytes };
}

/** Whether `buffer[start, start + BLOCK_SIZE)` is all zero bytes. */
function isZeroBlock(buffer: Uint8Array, start: number): boolean {
  let peek = 0;
  for (let i = start; i < start + PEEK_BYTES; i++) peek |= buffer[i] as number;
  return peek === 0 && ZERO_BLOCK.compare(buffer, start, start + BLOCK_SIZE) === 0;
}
