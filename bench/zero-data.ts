// The data sets of the zero-detection micro-benchmark: each is a few 4 MiB
// chunks (the engine's read size) that the benchmark cycles through until it
// has scanned 1 GiB. The working set (64 MiB) is larger than the CPU caches,
// as fresh read buffers are.
import { randomFillSync } from "node:crypto";
import { BLOCK_SIZE, CLUSTER_SIZE } from "../src/vma/constants.js";

export const CHUNK_BYTES = 64 * CLUSTER_SIZE;
const CHUNKS = 16;

export interface DataSet {
  readonly name: string;
  readonly chunks: readonly Buffer[];
}

function makeChunks(fill: (chunk: Buffer) => void): Buffer[] {
  return Array.from({ length: CHUNKS }, () => {
    const chunk = Buffer.alloc(CHUNK_BYTES);
    fill(chunk);
    return chunk;
  });
}

/** Random bytes with no zero word at the start, like real data almost always. */
function randomData(chunk: Buffer, start: number, end: number): void {
  randomFillSync(chunk, start, end - start);
}

function eachBlock(chunk: Buffer, visit: (blockStart: number) => void): void {
  for (let start = 0; start < chunk.length; start += BLOCK_SIZE) visit(start);
}

export function makeDataSets(): DataSet[] {
  return [
    { name: "all-zero clusters", chunks: makeChunks(() => {}) },
    { name: "all-data clusters", chunks: makeChunks((c) => randomData(c, 0, c.length)) },
    {
      // The `npm run bench` image: 1 MiB random, 1 MiB zero.
      name: "1 MiB data / 1 MiB zero",
      chunks: makeChunks((c) => {
        for (let start = 0; start < c.length; start += 2 * 2 ** 20) randomData(c, start, start + 2 ** 20);
      }),
    },
    {
      // Each block zero or random with even odds: every cluster is mixed.
      name: "mixed clusters (50% blocks)",
      chunks: makeChunks((c) =>
        eachBlock(c, (start) => {
          if (Math.random() < 0.5) randomData(c, start, start + BLOCK_SIZE);
        }),
      ),
    },
    {
      name: "only first byte of each block",
      chunks: makeChunks((c) => eachBlock(c, (start) => (c[start] = 1))),
    },
    {
      // 0x80 as the last byte is -0.0 as a little-endian Float64.
      name: "only last byte (0x80) of each block",
      chunks: makeChunks((c) => eachBlock(c, (start) => (c[start + BLOCK_SIZE - 1] = 0x80))),
    },
  ];
}
