// Reads one device in large chunks, one chunk ahead: while the caller hands
// chunk k to the archive, chunk k+1 is already being read. A chunk of the
// pool's size is read into a pooled buffer (the caller recycles it once the
// archive released it); any other size (the device's last chunk, throttled
// reads) into a fresh one. Chunks are a whole number of clusters long, with
// the bytes past the device end zero-filled.
import type { FileHandle } from "node:fs/promises";
import { describeError, JobFailure } from "./job-failure.js";
import { CLUSTER_SIZE } from "../vma/constants.js";
import type { ReadBufferPool } from "./read-buffer-pool.js";

export interface Chunk {
  /** Device offset of the first byte; a multiple of CLUSTER_SIZE. */
  readonly offset: number;
  /** Device bytes in the chunk; `data` is this rounded up to whole clusters. */
  readonly length: number;
  readonly data: Buffer;
}

type ReadResult = { readonly chunk: Chunk } | { readonly failure: JobFailure };

export interface ChunkReaderOptions {
  readonly name: string;
  readonly handle: FileHandle;
  readonly size: number;
  /** Bytes to read next (a multiple of CLUSTER_SIZE); asked before each read. */
  readonly chunkSize: () => number;
  /** Buffers for reads of exactly `pool.bufferSize` bytes; shared by the job's devices. */
  readonly pool?: ReadBufferPool;
}

export class ChunkReader {
  private readonly options: ChunkReaderOptions;
  /** Offset of the next read to start. */
  private nextOffset = 0;
  private inFlight: Promise<ReadResult> | undefined;

  constructor(options: ChunkReaderOptions) {
    this.options = options;
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

  /** Waits for a read still in flight, so that the descriptor can be closed safely. */
  async settle(): Promise<void> {
    const pending = this.inFlight;
    this.inFlight = undefined;
    if (pending !== undefined) await pending;
  }

  private startRead(): Promise<ReadResult> | undefined {
    const { size } = this.options;
    const offset = this.nextOffset;
    if (offset >= size) return undefined;
    const length = Math.min(this.options.chunkSize(), size - offset);
    this.nextOffset = offset + length;
    // Settles with a result object rather than rejecting, so a read nobody
    // awaits any more (the job stopped) is never an unhandled rejection.
    return this.read(offset, length).then(
      (chunk) => ({ chunk }),
      (error: unknown) => ({
        failure:
          error instanceof JobFailure
            ? error
            : new JobFailure(`device ${this.options.name}: read error at offset ${offset}: ${describeError(error)}`, {
                cause: error,
              }),
      }),
    );
  }

  private async read(offset: number, length: number): Promise<Chunk> {
    const clusters = Math.ceil(length / CLUSTER_SIZE);
    const { pool } = this.options;
    const pooled = pool !== undefined && length === pool.bufferSize;
    const data = pooled ? await pool.acquire() : Buffer.allocUnsafe(clusters * CLUSTER_SIZE);
    try {
      await this.fill(data, offset, length);
    } catch (error) {
      if (pooled) pool.giveBack(data);
      throw error;
    }
    // allocUnsafe memory may hold old data: zero the tail of the last cluster.
    if (length < data.length) data.fill(0, length);
    return { offset, length, data };
  }

  private async fill(data: Buffer, offset: number, length: number): Promise<void> {
    let filled = 0;
    while (filled < length) {
      const position = offset + filled;
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.options.handle.read(data, filled, length - filled, position));
      } catch (error) {
        throw new JobFailure(`device ${this.options.name}: read error at offset ${position}: ${describeError(error)}`, {
          cause: error,
        });
      }
      if (bytesRead === 0) {
        const { name, size } = this.options;
        throw new JobFailure(`device ${name}: source shrank: expected ${size} bytes, got EOF at offset ${position}`);
      }
      filled += bytesRead;
    }
  }
}
