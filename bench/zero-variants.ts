// The zero-detection strategies `bench/zero-detection.ts` compares. Each has
// the shape of src/engine/zero-mask.ts's scanCluster (same arguments, same
// result), so any of them could be wired in unchanged. They are written out
// one by one, not built from shared helpers, so that each inner loop is
// monomorphic and measured on its own.
import type { ClusterScan } from "../src/engine/zero-mask.js";
import { scanCluster } from "../src/engine/zero-mask.js";
import { BLOCK_SIZE, BLOCKS_PER_CLUSTER, CLUSTER_SIZE } from "../src/vma/constants.js";

export type ScanCluster = (buffer: Uint8Array, offset: number, deviceBytes: number) => ClusterScan;

export interface Variant {
  readonly name: string;
  readonly scan: ScanCluster;
  /** Known to be wrong on some inputs; measured to show the pitfall only. */
  readonly inexact?: boolean;
  /** Compare the whole chunk (4 MiB) against zeros first; scan clusters only if that fails. */
  readonly chunkFirst?: boolean;
}

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);
const ZERO_CLUSTER = Buffer.alloc(CLUSTER_SIZE);
const WORDS32 = BLOCK_SIZE / 4;
const WORDS64 = BLOCK_SIZE / 8;

/** The reference: one byte at a time. Obviously right, obviously slow. */
export function naiveScan(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    let zero = true;
    for (let i = offset + blockStart; i < offset + blockStart + BLOCK_SIZE; i++) {
      if (buffer[i] !== 0) {
        zero = false;
        break;
      }
    }
    if (zero) zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    else mask |= 1 << block;
  }
  return { mask, zeroBytes };
}

/** What the issue profiled: one native compare per 4 KiB block. */
function perBlockCompare(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const start = offset + blockStart;
    if (ZERO_BLOCK.compare(buffer, start, start + BLOCK_SIZE) === 0) {
      zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    } else {
      mask |= 1 << block;
    }
  }
  return { mask, zeroBytes };
}

/** The engine before bench/zero-detection.ts: whole cluster, then one native compare per block. */
function clusterThenCompare(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  if (deviceBytes === CLUSTER_SIZE && ZERO_CLUSTER.compare(buffer, offset, offset + CLUSTER_SIZE) === 0) {
    return { mask: 0, zeroBytes: CLUSTER_SIZE };
  }
  return perBlockCompare(buffer, offset, deviceBytes);
}

/** A Uint32Array view of the cluster, or undefined when not 4-byte aligned. */
function view32(buffer: Uint8Array, offset: number): Uint32Array | undefined {
  const at = buffer.byteOffset + offset;
  return at % 4 === 0 ? new Uint32Array(buffer.buffer, at, CLUSTER_SIZE / 4) : undefined;
}

/** Word-wide loop, exit at the first non-zero word; per-block compare when unaligned. */
function u32Loop(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  const words = view32(buffer, offset);
  if (words === undefined) return perBlockCompare(buffer, offset, deviceBytes);
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const first = block * WORDS32;
    const end = first + WORDS32;
    let i = first;
    while (i < end && words[i] === 0) i++;
    if (i === end) zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    else mask |= 1 << block;
  }
  return { mask, zeroBytes };
}

/** Word-wide, eight words OR-ed per step (fewer branches), exit per 32 bytes. */
function u32Unrolled(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  const w = view32(buffer, offset);
  if (w === undefined) return perBlockCompare(buffer, offset, deviceBytes);
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const end = (block + 1) * WORDS32;
    let i = block * WORDS32;
    for (; i < end; i += 8) {
      if ((w[i]! | w[i + 1]! | w[i + 2]! | w[i + 3]! | w[i + 4]! | w[i + 5]! | w[i + 6]! | w[i + 7]!) !== 0) break;
    }
    if (i >= end) zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    else mask |= 1 << block;
  }
  return { mask, zeroBytes };
}

/** Whole-cluster compare first; then the word-wide loop per block. */
function clusterThenU32(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  if (deviceBytes === CLUSTER_SIZE && ZERO_CLUSTER.compare(buffer, offset, offset + CLUSTER_SIZE) === 0) {
    return { mask: 0, zeroBytes: CLUSTER_SIZE };
  }
  return u32Unrolled(buffer, offset, deviceBytes);
}

/**
 * Float64 words compared with `!== 0`: WRONG, -0.0 (a lone 0x80 in a
 * word's top byte) equals 0, so such a block is called zero.
 */
function f64Naive(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  const at = buffer.byteOffset + offset;
  if (at % 8 !== 0) return perBlockCompare(buffer, offset, deviceBytes);
  const f = new Float64Array(buffer.buffer, at, CLUSTER_SIZE / 8);
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const end = (block + 1) * WORDS64;
    let i = block * WORDS64;
    while (i < end && f[i] === 0) i++;
    if (i === end) zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    else mask |= 1 << block;
  }
  return { mask, zeroBytes };
}

/** Float64 words made exact: Object.is(x, 0) holds only for the all-zero bit pattern. */
function f64ObjectIs(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  const at = buffer.byteOffset + offset;
  if (at % 8 !== 0) return perBlockCompare(buffer, offset, deviceBytes);
  const f = new Float64Array(buffer.buffer, at, CLUSTER_SIZE / 8);
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const end = (block + 1) * WORDS64;
    let i = block * WORDS64;
    while (i < end && Object.is(f[i], 0)) i++;
    if (i === end) zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    else mask |= 1 << block;
  }
  return { mask, zeroBytes };
}

/** BigUint64Array words: exact, but each read may make a BigInt. */
function big64(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  const at = buffer.byteOffset + offset;
  if (at % 8 !== 0) return perBlockCompare(buffer, offset, deviceBytes);
  const b = new BigUint64Array(buffer.buffer, at, CLUSTER_SIZE / 8);
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const end = (block + 1) * WORDS64;
    let i = block * WORDS64;
    while (i < end && b[i] === 0n) i++;
    if (i === end) zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    else mask |= 1 << block;
  }
  return { mask, zeroBytes };
}

/**
 * Peek at a block's first bytes in JS (data blocks almost always differ
 * there) and only then pay for a native compare of the whole block.
 */
function peekThenCompare(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
    const blockStart = block * BLOCK_SIZE;
    if (blockStart >= deviceBytes) break;
    const start = offset + blockStart;
    let peek = 0;
    for (let i = start; i < start + 16; i++) peek |= buffer[i]!;
    if (peek === 0 && ZERO_BLOCK.compare(buffer, start, start + BLOCK_SIZE) === 0) {
      zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - blockStart);
    } else {
      mask |= 1 << block;
    }
  }
  return { mask, zeroBytes };
}

/** Whole-cluster compare first, then peek-then-compare per block. */
function clusterThenPeek(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  if (deviceBytes === CLUSTER_SIZE && ZERO_CLUSTER.compare(buffer, offset, offset + CLUSTER_SIZE) === 0) {
    return { mask: 0, zeroBytes: CLUSTER_SIZE };
  }
  return peekThenCompare(buffer, offset, deviceBytes);
}

// Not measured any more: a native search for the next run of BLOCK_SIZE
// zero bytes (`cluster.indexOf(ZERO_BLOCK, position)`), blocks before the
// run being data. Fast on random data (~100 ms/GiB) but the search is
// quadratic on near-zero blocks: ~2,000 s/GiB when only each block's last
// byte is set.

export const VARIANTS: readonly Variant[] = [
  { name: "per-block Buffer.compare", scan: perBlockCompare },
  { name: "cluster compare, then per-block", scan: clusterThenCompare },
  { name: "Uint32 loop", scan: u32Loop },
  { name: "Uint32 x8 OR loop", scan: u32Unrolled },
  { name: "cluster compare, then Uint32 x8", scan: clusterThenU32 },
  { name: "Float64 !== 0 (inexact)", scan: f64Naive, inexact: true },
  { name: "Float64 Object.is", scan: f64ObjectIs },
  { name: "BigUint64 !== 0n", scan: big64 },
  { name: "peek 16 B, then compare", scan: peekThenCompare },
  { name: "cluster compare, then peek", scan: clusterThenPeek },
  { name: "shipped scanCluster (zero-mask.ts)", scan: scanCluster },
  { name: "chunk compare, then cluster+peek", scan: clusterThenPeek, chunkFirst: true },
];
