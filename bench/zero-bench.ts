// Zero-detection micro-benchmark: every strategy of bench/zero-variants.ts
// on every data set of bench/zero-data.ts, checked against the byte-by-byte
// reference first, then timed over 1 GiB-equivalent of clusters per data set.
// Variants run interleaved (the starting one rotates each round) so that a
// noisy neighbour on a shared machine hits them all alike; medians are shown.
import { performance } from "node:perf_hooks";
import { BLOCK_SIZE, CLUSTER_SIZE } from "../src/vma/constants.js";
import { median } from "./stats.js";
import { CHUNK_BYTES, makeDataSets } from "./zero-data.js";
import type { DataSet } from "./zero-data.js";
import { naiveScan, VARIANTS } from "./zero-variants.js";
import type { Variant } from "./zero-variants.js";

export interface ZeroBenchOptions {
  /** Timed rounds; each times every variant once on every data set. */
  readonly rounds: number;
  /** Bytes scanned per timing (the data set's chunks, cycled). */
  readonly bytesPerRun: number;
}

const ZERO_CHUNK = Buffer.alloc(CHUNK_BYTES);

/** Scans one chunk the way the job runner does; returns a checksum of the scans. */
function scanChunk(variant: Variant, chunk: Buffer): number {
  if (variant.chunkFirst && ZERO_CHUNK.compare(chunk) === 0) return (chunk.length / CLUSTER_SIZE) * CLUSTER_SIZE;
  const scan = variant.scan;
  let sum = 0;
  for (let start = 0; start < chunk.length; start += CLUSTER_SIZE) {
    const result = scan(chunk, start, CLUSTER_SIZE);
    sum += result.mask + result.zeroBytes;
  }
  return sum;
}

/** Milliseconds to scan `bytes` of the data set. */
function timeRun(variant: Variant, data: DataSet, bytes: number): { ms: number; sum: number } {
  const passes = Math.max(1, Math.round(bytes / (data.chunks.length * CHUNK_BYTES)));
  let sum = 0;
  const started = performance.now();
  for (let pass = 0; pass < passes; pass++) {
    for (const chunk of data.chunks) sum += scanChunk(variant, chunk);
  }
  return { ms: performance.now() - started, sum };
}

const PARTIAL_DEVICE_BYTES = [512, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 512, CLUSTER_SIZE - 512];

interface Case {
  readonly label: string;
  readonly buffer: Buffer;
  readonly offset: number;
  readonly deviceBytes: number;
  readonly mask: number;
  readonly zeroBytes: number;
}

/**
 * Every cluster of the data set in place, and the first chunk's clusters
 * as final partial clusters (zero-padded copies, as the chunk reader makes),
 * each with the reference's answer.
 */
function exactnessCases(data: DataSet): Case[] {
  const cases: Case[] = [];
  for (const [index, chunk] of data.chunks.entries()) {
    for (let offset = 0; offset < chunk.length; offset += CLUSTER_SIZE) {
      const label = `chunk ${index} cluster ${offset / CLUSTER_SIZE}`;
      cases.push({
        label,
        buffer: chunk,
        offset,
        deviceBytes: CLUSTER_SIZE,
        ...naiveScan(chunk, offset, CLUSTER_SIZE),
      });
      if (index !== 0) continue;
      for (const deviceBytes of PARTIAL_DEVICE_BYTES) {
        const buffer = Buffer.alloc(CLUSTER_SIZE);
        chunk.copy(buffer, 0, offset, offset + deviceBytes);
        cases.push({
          label: `${label}, ${deviceBytes} device bytes`,
          buffer,
          offset: 0,
          deviceBytes,
          ...naiveScan(buffer, 0, deviceBytes),
        });
      }
    }
  }
  return cases;
}

/** First case where the variant disagrees with the reference, or undefined. */
function firstMismatch(variant: Variant, cases: readonly Case[]): string | undefined {
  for (const c of cases) {
    const got = variant.scan(c.buffer, c.offset, c.deviceBytes);
    if (got.mask !== c.mask || got.zeroBytes !== c.zeroBytes) {
      return `${c.label}: got ${JSON.stringify(got)}, want ${JSON.stringify({ mask: c.mask, zeroBytes: c.zeroBytes })}`;
    }
  }
  return undefined;
}

export async function benchZeroDetection(options: ZeroBenchOptions): Promise<void> {
  const dataSets = makeDataSets();
  const gib = options.bytesPerRun / 2 ** 30;
  console.log(
    `\nzero detection (${(options.bytesPerRun / 2 ** 20).toFixed(0)} MiB of 64 KiB clusters per run, median ms per GiB of ${options.rounds} interleaved rounds):`,
  );
  // Variant → its first wrong answer, if any.
  const wrong = new Map<Variant, string>();
  for (const data of dataSets) {
    const cases = exactnessCases(data);
    for (const variant of VARIANTS) {
      if (wrong.has(variant)) continue;
      const mismatch = firstMismatch(variant, cases);
      if (mismatch !== undefined) wrong.set(variant, `${data.name}: ${mismatch}`);
    }
  }
  // Warm-up: every variant once on every data set, so the JIT has settled.
  for (const data of dataSets) for (const variant of VARIANTS) timeRun(variant, data, data.chunks.length * CHUNK_BYTES);

  const samples = new Map<Variant, number[][]>(VARIANTS.map((v) => [v, dataSets.map(() => [])]));
  for (let round = 0; round < options.rounds; round++) {
    for (const [d, data] of dataSets.entries()) {
      // The first timing after a change of data set runs slow whatever the variant: discard one.
      timeRun(VARIANTS[0]!, data, data.chunks.length * CHUNK_BYTES);
      for (let step = 0; step < VARIANTS.length; step++) {
        const variant = VARIANTS[(round + d + step) % VARIANTS.length]!;
        samples.get(variant)![d]!.push(timeRun(variant, data, options.bytesPerRun).ms / gib);
      }
    }
  }

  const nameWidth = Math.max(...VARIANTS.map((v) => v.name.length)) + 2;
  const columns = dataSets.map((_, i) => `(${String.fromCharCode(97 + i)})`);
  console.log(`  ${"".padEnd(nameWidth)}${columns.map((c) => c.padStart(9)).join("")}   exact`);
  for (const variant of VARIANTS) {
    const cells = samples.get(variant)!.map((times) => median(times).toFixed(0).padStart(9));
    console.log(`  ${variant.name.padEnd(nameWidth)}${cells.join("")}   ${wrong.has(variant) ? "NO" : "yes"}`);
  }
  for (const [i, d] of dataSets.entries()) console.log(`  ${columns[i]} ${d.name}`);
  for (const [variant, problem] of wrong) console.log(`  ${variant.name} is wrong on ${problem}`);
}
