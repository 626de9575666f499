// An in-memory DiskSource for tests of the engine's seam: bytes in a
// Buffer, an optional allocation map, and a log of every read and map call
// so a test can see what the engine asked for.
import type { DiskSource, SourceExtent } from "../../src/sources/disk-source.js";

export interface MemorySourceOptions {
  /** The allocation map; absent: the source has no mapExtents. */
  readonly extents?: readonly SourceExtent[];
  /** Most extents one mapExtents call returns (to exercise "ends early"). */
  readonly extentsPerCall?: number;
  /** Called before each read; may throw to fail it. */
  readonly beforeRead?: (position: number, length: number) => void;
  /** Returned by scratchBytes(), when given. */
  readonly scratchBytes?: () => number;
  readonly lockKey?: string;
}

export class MemorySource implements DiskSource {
  readonly kind = "nbd" as const;
  readonly size: number;
  readonly lockKey: string;
  readonly location = "memory";
  /** [position, length] of every read. */
  readonly reads: Array<[number, number]> = [];
  /** [offset, length] of every mapExtents call. */
  readonly mapCalls: Array<[number, number]> = [];
  closed = 0;
  readonly mapExtents?: (offset: number, length: number) => Promise<readonly SourceExtent[]>;
  readonly scratchBytes?: () => Promise<number>;
  private readonly data: Buffer;
  private readonly options: MemorySourceOptions;

  constructor(data: Buffer, options: MemorySourceOptions = {}) {
    this.data = data;
    this.size = data.length;
    this.options = options;
    this.lockKey = options.lockKey ?? `memory:${Math.random()}`;
    const extents = options.extents;
    if (extents !== undefined) {
      this.mapExtents = async (offset, length) => {
        this.mapCalls.push([offset, length]);
        const end = offset + length;
        const found: SourceExtent[] = [];
        for (const extent of extents) {
          const from = Math.max(extent.offset, offset);
          const to = Math.min(extent.offset + extent.length, end);
          if (from < to) found.push({ offset: from, length: to - from, zero: extent.zero });
        }
        return found.slice(0, options.extentsPerCall ?? found.length);
      };
    }
    const scratch = options.scratchBytes;
    if (scratch !== undefined) this.scratchBytes = async () => scratch();
  }

  async read(buffer: Uint8Array, bufferOffset: number, length: number, position: number): Promise<void> {
    this.reads.push([position, length]);
    this.options.beforeRead?.(position, length);
    if (position + length > this.size) throw new Error(`read past the end at offset ${position}`);
    this.data.copy(buffer, bufferOffset, position, position + length);
  }

  async close(): Promise<void> {
    this.closed += 1;
  }
}
