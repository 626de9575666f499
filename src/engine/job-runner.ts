// The read pipeline of one job: devices one after another in request
// order, each read in chunks (one ahead), throttled, split into clusters
// with their zero masks and handed to the archive target without copying.
// Ends by committing the archive (done) or removing it (error, cancelled);
// it never rejects, so no failure can escape as an unhandled rejection.
import type { BackupTarget } from "../drivers/driver.js";
import { ChunkReader } from "./chunk-reader.js";
import type { Chunk } from "./chunk-reader.js";
import type { Job, TerminalState } from "./job.js";
import { describeError, JobFailure } from "./job-failure.js";
import type { DiskSource } from "../sources/disk-source.js";
import type { SpeedLimiter } from "./speed-limiter.js";
import { CLUSTER_SIZE, WRITER_SLOTS_PER_EXTENT } from "../vma/constants.js";
import { poolCapacity, ReadBufferPool } from "./read-buffer-pool.js";
import { scanCluster } from "./zero-mask.js";

/** Largest read: 32 clusters (2 MiB), the fastest of 256 KiB..4 MiB measured end to end with the buffer pool. */
export const MAX_CHUNK_BYTES = 32 * CLUSTER_SIZE;

export interface JobRun {
  readonly job: Job;
  readonly target: BackupTarget;
  /** In request order; device i was registered as dev_id i + 1. */
  readonly sources: readonly DiskSource[];
  /** Device names, in the same order. */
  readonly names: readonly string[];
  readonly limiter: SpeedLimiter;
  /** Called after each chunk's counters were added to the job. */
  readonly onProgress: () => void;
}

/**
 * Clusters the VMA target keeps until more arrive: the extent being filled
 * (queued extents are written without more input). The pool must hold more
 * than this after its oldest buffer, or a read could wait for itself.
 */
const TARGET_HELD_CLUSTERS = WRITER_SLOTS_PER_EXTENT;

function createPool(): ReadBufferPool {
  return new ReadBufferPool(MAX_CHUNK_BYTES, poolCapacity(MAX_CHUNK_BYTES / CLUSTER_SIZE, TARGET_HELD_CLUSTERS));
}

export interface JobOutcome {
  readonly state: TerminalState;
  readonly errorMessage: string;
  /** An unexpected error (a bug), for the log. */
  readonly unexpected?: unknown;
  /** Removing the partial archive failed, for the log. */
  readonly cleanupError?: unknown;
}

function writeFailure(device: string, offset: number, error: unknown): JobFailure {
  return new JobFailure(`device ${device}: writing archive failed at offset ${offset}: ${describeError(error)}`, {
    cause: error,
  });
}

/** One cluster that reads as zero, handed for clusters the source maps as zero (never written to). */
const ZERO_CLUSTER = Buffer.alloc(CLUSTER_SIZE);

/**
 * Hands every cluster of `chunk` to the target; returns the chunk's zero
 * bytes. Clusters not read (mapped as zero) go as all-zero clusters (mask 0).
 */
async function writeChunk(target: BackupTarget, devId: number, name: string, chunk: Chunk): Promise<number> {
  if (chunk.data === undefined) {
    // Mapped as zero as a whole: no cluster was read, none needs a look.
    try {
      await target.writeZeroClusters(devId, chunk.offset / CLUSTER_SIZE, Math.ceil(chunk.length / CLUSTER_SIZE));
    } catch (error) {
      throw writeFailure(name, chunk.offset, error);
    }
    return chunk.length;
  }
  let zeroBytes = 0;
  for (let start = 0, cluster = 0; start < chunk.length; start += CLUSTER_SIZE, cluster++) {
    const deviceBytes = Math.min(CLUSTER_SIZE, chunk.length - start);
    let data: Uint8Array;
    let mask: number;
    if (chunk.zeroClusters?.[cluster] === true) {
      data = ZERO_CLUSTER;
      mask = 0;
      zeroBytes += deviceBytes;
    } else {
      const scan = scanCluster(chunk.data, start, deviceBytes);
      zeroBytes += scan.zeroBytes;
      data = chunk.data.subarray(start, start + CLUSTER_SIZE);
      mask = scan.mask;
    }
    const offset = chunk.offset + start;
    try {
      await target.writeCluster(devId, offset / CLUSTER_SIZE, data, mask);
    } catch (error) {
      throw writeFailure(name, offset, error);
    }
  }
  return zeroBytes;
}

async function copyDevice(run: JobRun, index: number, pool: ReadBufferPool): Promise<void> {
  const { job, target, limiter } = run;
  const source = run.sources[index] as DiskSource;
  const name = run.names[index] as string;
  const devId = index + 1;
  const reader = new ChunkReader({
    name,
    source,
    chunkSize: () => limiter.chunkSize(MAX_CHUNK_BYTES, CLUSTER_SIZE),
    pool,
  });
  try {
    for (;;) {
      job.signal.throwIfAborted();
      const chunk = await reader.next();
      if (chunk === undefined) break;
      // The speed limit counts bytes read from the source only: clusters
      // the source maps as zero cost nothing, however many there are.
      if (chunk.bytesRead > 0) await limiter.acquire(chunk.bytesRead, job.signal);
      const zeroBytes = await writeChunk(target, devId, name, chunk);
      // Every cluster of the chunk is with the target now: the buffer is
      // reused once the target released them (their extent writes settled),
      // never earlier. A chunk that failed half-way is never recycled.
      if (chunk.data !== undefined) pool.recycle(chunk.data, target.released());
      job.addProgress(index, chunk.length, zeroBytes);
      run.onProgress();
    }
    // A live source proves its point in time held for every read (after the
    // last one, so that nothing read can have come after a failure).
    try {
      await source.confirm?.();
    } catch (error) {
      throw new JobFailure(`device ${name}: ${describeError(error)}`, { cause: error });
    }
    try {
      await target.completeDevice(devId);
    } catch (error) {
      throw writeFailure(name, source.size, error);
    }
  } finally {
    // The source is closed after the job: no read may still be running then.
    await reader.settle();
  }
}

/** Runs the job to its end and reports how it ended. Never rejects. */
export async function runJob(run: JobRun): Promise<JobOutcome> {
  const { job, target } = run;
  const pool = createPool();
  try {
    for (let index = 0; index < run.sources.length; index++) await copyDevice(run, index, pool);
    job.signal.throwIfAborted();
    try {
      await target.close();
    } catch (error) {
      // The final flush belongs to the last device's last clusters.
      const last = run.sources.length - 1;
      throw writeFailure(run.names[last] as string, (run.sources[last] as DiskSource).size, error);
    }
    return { state: "done", errorMessage: "" };
  } catch (error) {
    let cleanupError: unknown;
    try {
      await target.abort();
    } catch (abortError) {
      cleanupError = abortError;
    }
    const cleanup = cleanupError === undefined ? {} : { cleanupError };
    if (job.signal.aborted) return { state: "cancelled", errorMessage: job.cancelReason, ...cleanup };
    if (error instanceof JobFailure) return { state: "error", errorMessage: error.message, ...cleanup };
    return {
      state: "error",
      errorMessage: `internal error: ${describeError(error)}`,
      unexpected: error,
      ...cleanup,
    };
  } finally {
    // Closed or aborted: the target holds no buffer any more; the next job reuses them.
    void pool.dispose();
  }
}
