// Reads one device in large chunks, one chunk ahead: while the caller hands
// chunk k to the archive, chunk k+1 is already being read. A chunk of the
// pool's size is read into a pooled buffer (the caller recycles it once the
// archive released it); any other size (the device's last chunk, throttled
// reads) into a fresh one. Chunks are a whole number of clusters long, with
// the bytes past the device end zero-filled.
//
// When the source maps its allocation (mapExtents), clusters that lie wholly
// in zero extents are never read: a chunk starting in such a run covers the
// whole run (up to MAX_ZERO_CHUNK_BYTES) and carries no data, and in a chunk
// of data the zero clusters are marked and skipped. A cluster partly in data
// is read whole.
import type { DiskSource } from "../sources/disk-source.js";
import { SourceEndedError, SourceReadError } from "../sources/source-read-errors.js";
import { CLUSTER_SIZE } from "../vma/constants.js";
import { describeError, JobFailure } from "./job-failure.js";
import type { ReadBufferPool } from "./read-buffer-pool.js";
import { ZeroExtents } from "./zero-extents.js";

/** Longest chunk of clusters that read as zero: 1 GiB, so progress still moves on huge holes. */
export const MAX_ZERO_CHUNK_BYTES = 16384 * CLUSTER_SIZE;

export interface Chunk {
  /** Device offset of the first byte; a multiple of CLUSTER_SIZE. */
  readonly offset: number;
  /** Device bytes in the chunk; `data` is this rounded up to whole clusters. */
  readonly length: number;
  /** The clusters read; undefined when every cluster reads as zero (nothing was read). */
  readonly data: Buffer | undefined;
  /**
   * Per cluster of the chunk: true when the source maps it as zero and it
   * was not read (its bytes in `data` are undefined). Undefined: every
   * cluster was read.
   */
  readonly zeroClusters?: readonly boolean[];
  /** Bytes actually read from the source (what the speed limit counts). */
  readonly bytesRead: number;
}

type ReadResult = { readonly chunk: Chunk } | { readonly failure: JobFailure };

export interface ChunkReaderOptions {
  readonly name: string;
  readonly source: DiskSource;
  /** Bytes to read next (a multiple of CLUSTER_SIZE); asked before each read. */
  readonly chunkSize: () => number;
  /** Buffers for reads of exactly `pool.bufferSize` bytes; shared by the job's devices. */
  readonly pool?: ReadBufferPool;
}

/** A contiguous run of clusters to read: chunk-relative byte offset and length. */
interface ReadRun {
  readonly start: number;
  readonly length: number;
}

export class ChunkReader {
  private readonly options: ChunkReaderOptions;
  private readonly size: number;
  private readonly zeros: ZeroExtents | undefined;
  /** Offset of the next read to start. */
  private nextOffset = 0;
  private inFlight: Promise<ReadResult> | undefined;

  constructor(options: ChunkReaderOptions) {
    this.options = options;
    this.size = options.source.size;
    this.zeros = options.source.mapExtents === undefined ? undefined : new ZeroExtents(options.source, this.size);
  }

  /**
   * The next chunk, or undefined at the end of the device. Throws JobFailure
   * on a read error or when the source ends before its size.
   */
  async next(): Promise<Chunk | undefined> {
    const pending = this.inFlight ?? this.startRead();
    this.inFlight = undefined;
    if (pending === undefined) return undefined;
    const result = await pending;
    if ("failure" in result) throw result.failure;
    this.inFlight = this.startRead();
    return result.chunk;
  }

  /** Waits for a read still in flight, so that the source can be closed safely. */
  async settle(): Promise<void> {
    const pending = this.inFlight;
    this.inFlight = undefined;
    if (pending !== undefined) await pending;
  }

  private startRead(): Promise<ReadResult> | undefined {
    const offset = this.nextOffset;
    if (offset >= this.size) return undefined;
    // next() starts a read only after the previous one settled, so read()
    // may move nextOffset after an await (a run of zeros).
    const pending = this.read(offset);
    // Settles with a result object rather than rejecting, so a read nobody
    // awaits any more (the job stopped) is never an unhandled rejection.
    return pending.then(
      (chunk) => ({ chunk }),
      (error: unknown) => ({ failure: this.failureOf(error, offset) }),
    );
  }

  private failureOf(error: unknown, offset: number): JobFailure {
    const { name } = this.options;
    if (error instanceof JobFailure) return error;
    if (error instanceof SourceEndedError) {
      return new JobFailure(
        `device ${name}: source shrank: expected ${error.expectedSize} bytes, got EOF at offset ${error.position}`,
        { cause: error },
      );
    }
    if (error instanceof SourceReadError) {
      return new JobFailure(`device ${name}: read error at offset ${error.position}: ${describeError(error.cause)}`, {
        cause: error,
      });
    }
    return new JobFailure(`device ${name}: read error at offset ${offset}: ${describeError(error)}`, { cause: error });
  }

  private async read(offset: number): Promise<Chunk> {
    const length = Math.min(this.options.chunkSize(), this.size - offset);
    this.nextOffset = offset + length;
    if (this.zeros === undefined) return this.readClusters(offset, length, undefined);

    const zeroEnd = await this.mapZeros(offset, Math.min(this.size, offset + MAX_ZERO_CHUNK_BYTES));
    if (zeroEnd >= Math.min(this.size, offset + CLUSTER_SIZE)) {
      // A run of whole zero clusters (the device's partial last cluster counts
      // when its device bytes are zero): nothing to read.
      const end =
        zeroEnd >= this.size ? this.size : offset + Math.floor((zeroEnd - offset) / CLUSTER_SIZE) * CLUSTER_SIZE;
      this.nextOffset = end;
      return { offset, length: end - offset, data: undefined, bytesRead: 0 };
    }
    const zeroClusters: boolean[] = [];
    for (let start = offset; start < offset + length; start += CLUSTER_SIZE) {
      const clusterEnd = Math.min(start + CLUSTER_SIZE, this.size);
      zeroClusters.push((await this.mapZeros(start, clusterEnd)) >= clusterEnd);
    }
    return this.readClusters(offset, length, zeroClusters);
  }

  private async mapZeros(offset: number, limit: number): Promise<number> {
    try {
      return await (this.zeros as ZeroExtents).zeroEnd(offset, limit);
    } catch (error) {
      throw new JobFailure(
        `device ${this.options.name}: mapping extents at offset ${offset} failed: ${describeError(error)}`,
        {
          cause: error,
        },
      );
    }
  }

  private async readClusters(
    offset: number,
    length: number,
    zeroClusters: readonly boolean[] | undefined,
  ): Promise<Chunk> {
    const clusters = Math.ceil(length / CLUSTER_SIZE);
    const { pool } = this.options;
    const pooled = pool !== undefined && length === pool.bufferSize;
    const data = pooled ? await pool.acquire() : Buffer.allocUnsafe(clusters * CLUSTER_SIZE);
    let bytesRead = 0;
    try {
      for (const run of readRuns(length, zeroClusters)) {
        await this.options.source.read(data, run.start, run.length, offset + run.start);
        bytesRead += run.length;
      }
    } catch (error) {
      if (pooled) pool.giveBack(data);
      throw error;
    }
    // allocUnsafe memory may hold old data: zero the tail of the last cluster.
    if (length < data.length) data.fill(0, length);
    return { offset, length, data, bytesRead, ...(zeroClusters === undefined ? {} : { zeroClusters }) };
  }
}

/** The runs of clusters to read from a chunk of `length` device bytes. */
function readRuns(length: number, zeroClusters: readonly boolean[] | undefined): ReadRun[] {
  if (zeroClusters === undefined) return [{ start: 0, length }];
  const runs: ReadRun[] = [];
  let runStart: number | undefined;
  zeroClusters.forEach((zero, cluster) => {
    const start = cluster * CLUSTER_SIZE;
    if (!zero && runStart === undefined) runStart = start;
    if (zero && runStart !== undefined) {
      runs.push({ start: runStart, length: start - runStart });
      runStart = undefined;
    }
  });
  if (runStart !== undefined) runs.push({ start: runStart, length: length - runStart });
  return runs;
}
