// Exactness of the zero mask (src/engine/zero-mask.ts) at the edges its fast
// path could miss: a block whose only non-zero byte is its first or last (or
// just past the bytes peeked in JS), at every block position, in final
// partial clusters, and against a byte-by-byte reference on random clusters.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { ClusterScan } from "../src/engine/zero-mask.js";
import { scanCluster } from "../src/engine/zero-mask.js";
import { BLOCK_SIZE, BLOCKS_PER_CLUSTER, CLUSTER_SIZE } from "../src/vma/constants.js";

/** The reference: one byte at a time. */
function naiveScan(buffer: Uint8Array, offset: number, deviceBytes: number): ClusterScan {
  let mask = 0;
  let zeroBytes = 0;
  for (let block = 0; block * BLOCK_SIZE < deviceBytes; block++) {
    const start = offset + block * BLOCK_SIZE;
    const zero = buffer.subarray(start, start + BLOCK_SIZE).every((byte) => byte === 0);
    if (zero) zeroBytes += Math.min(BLOCK_SIZE, deviceBytes - block * BLOCK_SIZE);
    else mask |= 1 << block;
  }
  return { mask, zeroBytes };
}

/** Positions within a block worth a lone byte: both ends and around the peeked prefix. */
const EDGE_POSITIONS = [0, 1, 7, 8, 15, 16, 17, 2048, BLOCK_SIZE - 8, BLOCK_SIZE - 2, BLOCK_SIZE - 1];
/** 0x80 as a word's top byte is -0.0 as a Float64: a word-wide float check would miss it. */
const LONE_VALUES = [0x01, 0x80, 0xff];

describe("scanCluster exactness", () => {
  it("finds a block whose only non-zero byte is its first or its last, at every block position", () => {
    for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
      for (const at of [0, BLOCK_SIZE - 1]) {
        for (const value of LONE_VALUES) {
          const cluster = Buffer.alloc(CLUSTER_SIZE);
          cluster[block * BLOCK_SIZE + at] = value;
          expect(scanCluster(cluster, 0, CLUSTER_SIZE), `block ${block}, byte ${at}, 0x${value.toString(16)}`).toEqual({
            mask: 1 << block,
            zeroBytes: (BLOCKS_PER_CLUSTER - 1) * BLOCK_SIZE,
          });
        }
      }
    }
  });

  it("finds a lone byte anywhere near a block's edges or its peeked prefix, in a cluster inside a larger buffer", () => {
    const buffer = Buffer.alloc(3 * CLUSTER_SIZE);
    buffer.fill(0xaa, 0, CLUSTER_SIZE).fill(0x55, 2 * CLUSTER_SIZE);
    for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
      for (const at of EDGE_POSITIONS) {
        const index = CLUSTER_SIZE + block * BLOCK_SIZE + at;
        buffer[index] = 0x80;
        expect(scanCluster(buffer, CLUSTER_SIZE, CLUSTER_SIZE), `block ${block}, byte ${at}`).toEqual({
          mask: 1 << block,
          zeroBytes: (BLOCKS_PER_CLUSTER - 1) * BLOCK_SIZE,
        });
        buffer[index] = 0;
      }
    }
  });

  it("judges each block of a data cluster with one zero block at every position", () => {
    for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
      const cluster = Buffer.alloc(CLUSTER_SIZE, 0x11);
      cluster.fill(0, block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE);
      expect(scanCluster(cluster, 0, CLUSTER_SIZE)).toEqual({ mask: 0xffff & ~(1 << block), zeroBytes: BLOCK_SIZE });
    }
  });

  it("sees the last device byte of a final partial cluster, zero-padded after it", () => {
    for (const deviceBytes of [
      1,
      512,
      BLOCK_SIZE - 1,
      BLOCK_SIZE,
      BLOCK_SIZE + 1,
      5 * BLOCK_SIZE + 512,
      CLUSTER_SIZE - 1,
    ]) {
      const lastBlock = Math.ceil(deviceBytes / BLOCK_SIZE) - 1;
      const cluster = Buffer.alloc(CLUSTER_SIZE);
      expect(scanCluster(cluster, 0, deviceBytes), `${deviceBytes} zero bytes`).toEqual({
        mask: 0,
        zeroBytes: deviceBytes,
      });
      cluster[deviceBytes - 1] = 0x80;
      expect(scanCluster(cluster, 0, deviceBytes), `${deviceBytes}, last byte set`).toEqual({
        mask: 1 << lastBlock,
        zeroBytes: lastBlock * BLOCK_SIZE,
      });
      cluster[deviceBytes - 1] = 0;
      cluster[lastBlock * BLOCK_SIZE] = 1;
      expect(scanCluster(cluster, 0, deviceBytes), `${deviceBytes}, first byte of last block set`).toEqual({
        mask: 1 << lastBlock,
        zeroBytes: lastBlock * BLOCK_SIZE,
      });
    }
  });

  it("agrees with a byte-by-byte reference on random clusters", () => {
    // Each block: zero, random, or zero but for a few bytes at random places (ends favoured).
    const position = fc.oneof(fc.constantFrom(0, 15, 16, BLOCK_SIZE - 1), fc.integer({ min: 0, max: BLOCK_SIZE - 1 }));
    const lone = fc.record({ at: position, value: fc.integer({ min: 1, max: 255 }) });
    const block = fc.oneof(
      fc.constant<Array<{ at: number; value: number }> | "random">([]),
      fc.constant<"random">("random"),
      fc.array(lone, { minLength: 1, maxLength: 3 }),
    );
    const scenario = fc.record({
      blocks: fc.array(block, { minLength: BLOCKS_PER_CLUSTER, maxLength: BLOCKS_PER_CLUSTER }),
      deviceBytes: fc.oneof(fc.constant(CLUSTER_SIZE), fc.integer({ min: 1, max: CLUSTER_SIZE })),
      // Where the cluster sits in its buffer, not always word-aligned.
      offset: fc.oneof(fc.constant(0), fc.constant(CLUSTER_SIZE), fc.integer({ min: 1, max: 63 })),
      seed: fc.integer({ min: 1, max: 255 }),
    });
    fc.assert(
      fc.property(scenario, ({ blocks, deviceBytes, offset, seed }) => {
        const buffer = Buffer.alloc(offset + CLUSTER_SIZE + 64, 0x5a);
        const cluster = buffer.subarray(offset, offset + CLUSTER_SIZE).fill(0);
        blocks.forEach((content, index) => {
          const start = index * BLOCK_SIZE;
          if (content === "random") {
            for (let i = 0; i < BLOCK_SIZE; i++) cluster[start + i] = (seed * (i + 7) + index) & 0xff;
          } else {
            for (const { at, value } of content) cluster[start + at] = value;
          }
        });
        cluster.fill(0, deviceBytes); // the chunk reader zero-fills past the device end
        expect(scanCluster(buffer, offset, deviceBytes)).toEqual(naiveScan(buffer, offset, deviceBytes));
      }),
      { numRuns: 500 },
    );
  });
});
