// A fixed set of equally sized read buffers reused for a whole job, so that
// a backup allocates no memory per chunk (no GC, warm caches). The archive
// target keeps references to cluster bytes until their extent is written,
// so a buffer only comes back once the target says it released them. When
// the job is over (dispose), its buffers become spares the next job's pool
// takes before allocating: without that, each job's buffers would stay in
// memory until a major GC, and the daemon's peak RSS grew job after job.

/** Buffers are handed back with the promise of their release, and reused oldest first. */
interface Lent {
  readonly buffer: Buffer;
  readonly released: Promise<void>;
}

/** Spare buffers of finished jobs, by size; at most MAX_SPARES of each size are kept. */
const spares = new Map<number, Buffer[]>();
const MAX_SPARES = 8;

export class ReadBufferPool {
  /** Byte length of every buffer; only reads of exactly this size use the pool. */
  readonly bufferSize: number;
  private readonly capacity: number;
  private readonly owned = new WeakSet<Buffer>();
  private free: Buffer[] = [];
  /** Handed to the target, in order; targets release in the order they got the data. */
  private readonly lent: Lent[] = [];
  private created = 0;

  /**
   * `capacity` buffers of `bufferSize` bytes. For acquire() never to wait on
   * bytes the target only writes once it gets more, `capacity - 2` buffers
   * must hold more than the target can keep unwritten (see poolCapacity).
   */
  constructor(bufferSize: number, capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 3) {
      throw new RangeError(`a read buffer pool needs at least 3 buffers, got ${capacity}`);
    }
    this.bufferSize = bufferSize;
    this.capacity = capacity;
  }

  /** A buffer the target no longer references; waits for the oldest lent one if all are in use. */
  async acquire(): Promise<Buffer> {
    const free = this.free.pop();
    if (free !== undefined) return free;
    const oldest = this.lent.shift();
    if (oldest !== undefined && this.created >= this.capacity) {
      await oldest.released;
      return oldest.buffer;
    }
    if (oldest !== undefined) this.lent.unshift(oldest);
    // Below capacity, or buffers were lost on a failed chunk (the job is
    // ending): a spare or a new one. Contents are overwritten by the read.
    const buffer = spares.get(this.bufferSize)?.pop() ?? Buffer.allocUnsafe(this.bufferSize);
    this.created += 1;
    this.owned.add(buffer);
    return buffer;
  }

  /**
   * Takes back a buffer whose bytes were all handed to the target; it is
   * reused only after `released` settles. Buffers not from this pool are ignored.
   */
  recycle(buffer: Buffer, released: Promise<void>): void {
    if (!this.owned.has(buffer)) return;
    this.lent.push({ buffer, released });
  }

  /** Gives back a buffer the target never saw (a failed read). */
  giveBack(buffer: Buffer): void {
    if (this.owned.has(buffer)) this.free.push(buffer);
  }

  /**
   * The job is over (nothing reads into or from its buffers any more): once
   * every lent buffer is released, its buffers become spares for later pools.
   */
  async dispose(): Promise<void> {
    const lent = this.lent.splice(0);
    const buffers = [...this.free.splice(0), ...lent.map((entry) => entry.buffer)];
    await Promise.allSettled(lent.map((entry) => entry.released));
    const kept = spares.get(this.bufferSize) ?? [];
    for (const buffer of buffers) if (kept.length < MAX_SPARES && !kept.includes(buffer)) kept.push(buffer);
    spares.set(this.bufferSize, kept);
  }
}

/**
 * Buffers needed so that the oldest lent buffer is always releasable without
 * more input: at acquire time one chunk is read but not yet handed over, and
 * the `capacity - 2` chunks handed after the oldest must exceed the clusters
 * the target may hold unwritten (`heldClusters`, e.g. the extent being filled
 * plus those queued), so the oldest's clusters are in a queued write.
 */
export function poolCapacity(chunkClusters: number, heldClusters: number): number {
  return Math.ceil(heldClusters / chunkClusters) + 2;
}
