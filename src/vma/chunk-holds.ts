// Lets a consumer keep views of a source's chunks past the reader's next
// event. The reader recycles a chunk once its own views are done with
// (reader-chunk-queue.ts); a chunk that is held here goes back to the source
// only when its last hold is released. Extraction uses this to let an
// extent's writes run while the next extent is read, without the reader's
// contract (views valid until the next event) changing for anyone else.
import type { RecyclableChunks } from "./file-chunk-source.js";

export class ChunkHolds implements RecyclableChunks {
  private readonly source: AsyncIterable<Uint8Array> | RecyclableChunks;
  /** Holds per chunk memory. */
  private readonly counts = new Map<ArrayBufferLike, number>();
  /** Chunks the reader recycled while held: handed back at their last release. */
  private readonly deferred = new Map<ArrayBufferLike, Buffer>();

  constructor(source: AsyncIterable<Uint8Array> | RecyclableChunks) {
    this.source = source;
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return this.source[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  recycle(chunk: Buffer): void {
    if (!("recycle" in this.source)) return; // a fresh chunk per read: nothing to hand back
    if (this.counts.has(chunk.buffer)) this.deferred.set(chunk.buffer, chunk);
    else this.source.recycle(chunk);
  }

  /** Keeps the memory behind `views` from being read into again until the returned release is called (once). */
  hold(views: readonly Uint8Array[]): () => void {
    const memories = new Set(views.map((view) => view.buffer));
    for (const memory of memories) this.counts.set(memory, (this.counts.get(memory) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const memory of memories) this.release(memory);
    };
  }

  /** Chunk memories held right now. */
  get heldCount(): number {
    return this.counts.size;
  }

  private release(memory: ArrayBufferLike): void {
    const count = (this.counts.get(memory) ?? 0) - 1;
    if (count > 0) {
      this.counts.set(memory, count);
      return;
    }
    this.counts.delete(memory);
    const chunk = this.deferred.get(memory);
    if (chunk === undefined) return;
    this.deferred.delete(memory);
    this.recycle(chunk);
  }
}
