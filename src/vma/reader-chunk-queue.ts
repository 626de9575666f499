// The reader's view of its input: chunks pulled from an async iterator on
// demand, consumed strictly in order. Holds only what the current structure
// needs, hands out views instead of copies, and counts the absolute offset.
// When the source can reuse its chunks (RecyclableChunks), a consumed chunk
// is retired and handed back only at releaseRetired(), which the reader
// calls once the views it gave out can no longer be in use.
import type { RecyclableChunks } from "./file-chunk-source.js";

export class ChunkQueue {
  private readonly source: AsyncIterator<Uint8Array>;
  private readonly recycle: ((chunk: Buffer) => void) | undefined;
  private readonly chunks: Buffer[] = [];
  /** Consumed chunks whose views may still be in use. */
  private retired: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private headOffset = 0;
  private buffered = 0;
  private consumed = 0;
  private ended = false;

  constructor(source: AsyncIterable<Uint8Array> | RecyclableChunks) {
    this.source = source[Symbol.asyncIterator]();
    this.recycle = "recycle" in source ? (chunk) => source.recycle(chunk) : undefined;
  }

  /** Archive offset of the next unread byte. */
  get position(): number {
    return this.consumed;
  }

  /** Bytes received from the input so far: consumed plus held. */
  get received(): number {
    return this.consumed + this.buffered;
  }

  /** Unread bytes held right now. */
  get length(): number {
    return this.buffered;
  }

  /** Pulls chunks until `count` bytes are held; false when the input ends first. */
  async ensure(count: number): Promise<boolean> {
    while (this.buffered < count && !this.ended) {
      await this.pull();
    }
    return this.buffered >= count;
  }

  /** The next `count` held bytes, contiguous, without consuming them (a view when possible). */
  peek(count: number): Buffer {
    this.assertHeld(count);
    const head = this.chunks[0]!;
    if (head.length - this.headOffset >= count) {
      return head.subarray(this.headOffset, this.headOffset + count);
    }
    return Buffer.concat(this.views(count), count);
  }

  /** Consumes `count` held bytes and returns them contiguous (copied only if they span chunks). */
  take(count: number): Buffer {
    const bytes = this.peek(count);
    this.drop(count);
    return bytes;
  }

  /** Consumes `count` held bytes and returns them as views, never copying. */
  takeViews(count: number): Buffer[] {
    this.assertHeld(count);
    const views = this.views(count);
    this.drop(count);
    return views;
  }

  /** Consumes up to `count` bytes, held or not, without keeping them; returns how many. */
  async skip(count: number): Promise<number> {
    let skipped = 0;
    while (skipped < count) {
      if (this.buffered === 0) {
        if (this.ended) break;
        await this.pull();
        continue;
      }
      const step = Math.min(count - skipped, this.buffered);
      this.drop(step);
      skipped += step;
    }
    return skipped;
  }

  /** Hands the chunks consumed so far back to the source: no view of them is in use any more. */
  releaseRetired(): void {
    if (this.recycle === undefined || this.retired.length === 0) return;
    for (const chunk of this.retired) this.recycle(chunk);
    this.retired = [];
  }

  /** Stops the input early (the reader is done with it). */
  async close(): Promise<void> {
    this.chunks.length = 0;
    this.buffered = 0;
    if (!this.ended) {
      this.ended = true;
      await this.source.return?.();
    }
  }

  private async pull(): Promise<void> {
    const next = await this.source.next();
    if (next.done === true) {
      this.ended = true;
      return;
    }
    const chunk = next.value;
    if (chunk.byteLength === 0) return;
    this.chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.buffered += chunk.byteLength;
  }

  private views(count: number): Buffer[] {
    const views: Buffer[] = [];
    let offset = this.headOffset;
    let remaining = count;
    for (const chunk of this.chunks) {
      if (remaining === 0) break;
      const end = Math.min(chunk.length, offset + remaining);
      views.push(chunk.subarray(offset, end));
      remaining -= end - offset;
      offset = 0;
    }
    return views;
  }

  private drop(count: number): void {
    this.buffered -= count;
    this.consumed += count;
    let remaining = count;
    while (remaining > 0) {
      const head = this.chunks[0]!;
      const available = head.length - this.headOffset;
      if (available > remaining) {
        this.headOffset += remaining;
        return;
      }
      remaining -= available;
      const consumed = this.chunks.shift()!;
      if (this.recycle !== undefined) this.retired.push(consumed);
      this.headOffset = 0;
    }
  }

  private assertHeld(count: number): void {
    if (count > this.buffered) {
      throw new RangeError(`${count} bytes requested but only ${this.buffered} are held`);
    }
  }
}
