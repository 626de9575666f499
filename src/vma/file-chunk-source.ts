// Reads a regular file front to back in big positional reads, one read
// ahead, into buffers that the consumer hands back once it is done with them
// (recycle). A fresh buffer per read costs page faults and garbage
// collection, which made reading an archive from the page cache 5-10x
// slower than the read itself; a chunk that is never recycled simply is not
// reused, so a consumer that keeps chunks stays correct.
import type { FileHandle } from "node:fs/promises";

/** Chunks whose memory may be read into again once the consumer recycles them. */
export interface RecyclableChunks extends AsyncIterable<Buffer> {
  /** The consumer holds no view of `chunk` any more: its memory may be reused. */
  recycle(chunk: Buffer): void;
}

export class FileChunkSource implements RecyclableChunks {
  private readonly handle: FileHandle;
  private readonly chunkSize: number;
  /** Memory of the chunks this source read, and which of it is free to read into. */
  private readonly owned = new WeakSet<ArrayBufferLike>();
  private readonly free: ArrayBufferLike[] = [];
  private bytesRead = 0;

  constructor(handle: FileHandle, chunkSize: number) {
    this.handle = handle;
    this.chunkSize = chunkSize;
  }

  /** Bytes read from the file so far (including the read ahead). */
  get position(): number {
    return this.bytesRead;
  }

  recycle(chunk: Buffer): void {
    // Each chunk is a view at the start of its own ArrayBuffer (see read()).
    const memory = chunk.buffer;
    if (this.owned.has(memory) && !this.free.includes(memory)) this.free.push(memory);
  }

  /** Iterate once; closes the file when the iteration ends, early or not. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    let pending = this.read();
    try {
      for (;;) {
        const chunk = await pending;
        if (chunk.length === 0) return;
        pending = this.read();
        // Awaited on the next turn; a failure meanwhile is not "unhandled".
        pending.catch(() => undefined);
        yield chunk;
      }
    } finally {
      await pending.catch(() => undefined);
      await this.handle.close();
    }
  }

  private async read(): Promise<Buffer> {
    const memory = this.free.pop();
    const buffer = memory === undefined ? this.allocate() : Buffer.from(memory, 0, this.chunkSize);
    const { bytesRead } = await this.handle.read(buffer, 0, this.chunkSize, this.bytesRead);
    this.bytesRead += bytesRead;
    return buffer.subarray(0, bytesRead);
  }

  private allocate(): Buffer {
    // Not from Node's shared pool: the chunk must own its ArrayBuffer.
    const buffer = Buffer.allocUnsafeSlow(this.chunkSize);
    this.owned.add(buffer.buffer);
    return buffer;
  }
}
