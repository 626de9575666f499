// Writes one device of an archive to a raw image file with positional,
// vectored writes: clusters arrive in any order, so each block goes to its own
// offset. Stored blocks are written straight from the input's buffers; blocks
// that are views of one buffer and adjacent on disk merge into one iovec.
import { open, type FileHandle } from "node:fs/promises";
import { BLOCK_SIZE, BLOCKS_PER_CLUSTER, CLUSTER_SIZE } from "./constants.js";
import type { ExtentData } from "./reader-extent-data.js";
import type { ClusterRange, VmaDevice, VmaSlot } from "./reader-types.js";

/** A contiguous stretch of the image to write with one writev. */
interface Run {
  readonly position: number;
  readonly buffers: Buffer[];
  end: number;
}

/** Zeros for blocks the archive marks as zero (written unless sparse). */
const ZERO_CLUSTER = Buffer.alloc(CLUSTER_SIZE);
/** Zeros for missing clusters of an incomplete archive (written unless sparse). */
const ZERO_FILL = Buffer.alloc(16 * CLUSTER_SIZE);
/** A cluster's mask with every block stored. */
const FULL_MASK = (1 << BLOCKS_PER_CLUSTER) - 1;
/** Data almost always differs from zero within its first bytes. */
const PEEK_BYTES = 16;
/** Linux's IOV_MAX. */
const MAX_IOVECS = 1024;

export class DiskImageWriter {
  readonly path: string;
  private readonly handle: FileHandle;
  private readonly device: VmaDevice;
  private readonly sparse: boolean;
  private current: Run | undefined;
  private queued: Run[] = [];

  private constructor(handle: FileHandle, path: string, device: VmaDevice, sparse: boolean) {
    this.handle = handle;
    this.path = path;
    this.device = device;
    this.sparse = sparse;
  }

  /**
   * Creates `path` exclusively (never overwrites, fails with EEXIST) at the
   * device size, as a hole the writes then fill.
   */
  static async create(path: string, device: VmaDevice, sparse: boolean): Promise<DiskImageWriter> {
    const handle = await open(path, "wx");
    try {
      await handle.truncate(device.size);
    } catch (error) {
      await handle.close();
      throw error;
    }
    return new DiskImageWriter(handle, path, device, sparse);
  }

  /** Queues the blocks of one accepted slot; `data` is its extent's data. */
  addSlot(slot: VmaSlot, data: ExtentData): void {
    const base = slot.cluster * CLUSTER_SIZE;
    // vmstate is not bound by its size (Proxmox does not check it); disks end at theirs.
    const limit = this.device.isVmstate ? base + CLUSTER_SIZE : this.device.size;
    if (slot.mask === FULL_MASK && base + CLUSTER_SIZE <= limit) {
      // Most clusters hold data in all their blocks: one view of the whole
      // cluster, unless sparse finds a zero block in it.
      const views = data.views(slot.dataOffset, CLUSTER_SIZE);
      if (!this.sparse || !mayHaveZeroBlock(views)) {
        this.append(base, views);
        return;
      }
    }
    let dataOffset = slot.dataOffset;
    for (let block = 0; block < BLOCKS_PER_CLUSTER; block++) {
      const position = base + block * BLOCK_SIZE;
      if (position >= limit) break;
      const length = Math.min(BLOCK_SIZE, limit - position);
      if ((slot.mask & (1 << block)) !== 0) {
        const views = data.views(dataOffset, length);
        dataOffset += BLOCK_SIZE;
        if (this.sparse && isAllZero(views)) this.endRun();
        else this.append(position, views);
      } else if (this.sparse) {
        this.endRun();
      } else {
        // Consecutive zero blocks are adjacent in ZERO_CLUSTER, so they merge.
        this.append(position, [ZERO_CLUSTER.subarray(block * BLOCK_SIZE, block * BLOCK_SIZE + length)]);
      }
    }
  }

  /** Writes everything queued so far; runs go out in parallel, and all settle before it returns. */
  async flush(): Promise<void> {
    this.endRun();
    const runs = this.queued;
    this.queued = [];
    const writes = await Promise.allSettled(runs.map((run) => writeAll(this.handle, run.buffers, run.position)));
    for (const write of writes) if (write.status === "rejected") throw write.reason;
  }

  /** Writes zeros over clusters that were never written (for a fully allocated image). */
  async fillClusters(ranges: Iterable<ClusterRange>): Promise<void> {
    for (const range of ranges) {
      const start = range.first * CLUSTER_SIZE;
      const end = Math.min(this.device.size, (range.last + 1) * CLUSTER_SIZE);
      for (let position = start; position < end; position += ZERO_FILL.length) {
        await writeAll(this.handle, [ZERO_FILL.subarray(0, Math.min(ZERO_FILL.length, end - position))], position);
      }
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  private append(position: number, views: readonly Buffer[]): void {
    let run = this.current;
    if (run === undefined || run.end !== position) {
      this.endRun();
      run = this.current = { position, buffers: [], end: position };
    }
    for (const view of views) {
      const last = run.buffers.at(-1);
      if (last !== undefined && last.buffer === view.buffer && last.byteOffset + last.length === view.byteOffset) {
        run.buffers[run.buffers.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + view.length);
      } else {
        run.buffers.push(view);
      }
      run.end += view.length;
    }
  }

  private endRun(): void {
    if (this.current !== undefined) this.queued.push(this.current);
    this.current = undefined;
  }
}

/**
 * Whether the views (one block's bytes) are all zero. Their first bytes are
 * read in JS: a native compare costs more than the bytes it saves on data.
 */
function isAllZero(views: readonly Buffer[]): boolean {
  for (const view of views) {
    let peek = 0;
    const end = Math.min(PEEK_BYTES, view.length);
    for (let i = 0; i < end; i++) peek |= view[i] as number;
    if (peek !== 0 || ZERO_CLUSTER.compare(view, 0, view.length, 0, view.length) !== 0) return false;
  }
  return true;
}

/** Whether a 4 KiB block of the views (one cluster's bytes) may be all zero: false only when none is. */
function mayHaveZeroBlock(views: readonly Buffer[]): boolean {
  if (views.length !== 1) return true; // crosses input chunks: the per-block path decides
  const cluster = views[0]!;
  for (let start = 0; start < cluster.length; start += BLOCK_SIZE) {
    // Archives store only blocks with data, which mostly start with a non-zero byte.
    if (cluster[start] !== 0) continue;
    let peek = 0;
    for (let i = start; i < start + PEEK_BYTES; i++) peek |= cluster[i] as number;
    if (peek === 0 && ZERO_CLUSTER.compare(cluster, start, start + BLOCK_SIZE, 0, BLOCK_SIZE) === 0) return true;
  }
  return false;
}

/** pwritev of all `buffers` at `position`, in IOV_MAX batches, resuming after short writes. */
async function writeAll(handle: FileHandle, buffers: readonly Buffer[], position: number): Promise<void> {
  const pending = [...buffers];
  let index = 0;
  while (index < pending.length) {
    const batch = pending.slice(index, index + MAX_IOVECS);
    let { bytesWritten } = await handle.writev(batch, position);
    if (bytesWritten === 0) throw new Error(`no progress writing at offset ${position}`);
    position += bytesWritten;
    while (index < pending.length && bytesWritten >= pending[index]!.length) {
      bytesWritten -= pending[index]!.length;
      index += 1;
    }
    if (bytesWritten > 0) pending[index] = pending[index]!.subarray(bytesWritten);
  }
}
