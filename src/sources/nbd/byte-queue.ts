// The bytes a socket delivered and nobody consumed yet, as a list of the
// socket's own chunks (no concatenation): the parsers take small headers out
// of it and copy payloads once, straight into the caller's buffer. A chunk
// may come with a release function, called once the chunk is consumed (its
// memory is then read into again: see receive-buffers.ts).

interface Waiter {
  readonly bytes: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

export class ByteQueue {
  #chunks: Buffer[] = [];
  /** Release function of each chunk in #chunks (undefined: none). */
  #releases: Array<(() => void) | undefined> = [];
  /** Bytes of #chunks[0] already consumed. */
  #head = 0;
  #length = 0;
  #waiter: Waiter | undefined;
  #failure: Error | undefined;

  /** Bytes buffered and not consumed. */
  get length(): number {
    return this.#length;
  }

  /** Queues `chunk`; `release` is called once it is consumed (at once after a failure; chunks queued at a failure are left to the GC). */
  push(chunk: Buffer, release?: () => void): void {
    if (chunk.length === 0 || this.#failure !== undefined) {
      release?.();
      return;
    }
    this.#chunks.push(chunk);
    this.#releases.push(release);
    this.#length += chunk.length;
    const waiter = this.#waiter;
    if (waiter !== undefined && this.#length >= waiter.bytes) {
      this.#waiter = undefined;
      waiter.resolve();
    }
  }

  /** No more bytes will come: the pending and every later wait() rejects with `error`. */
  fail(error: Error): void {
    if (this.#failure !== undefined) return;
    this.#failure = error;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.reject(error);
  }

  /** Resolves once at least `bytes` are buffered; one waiter at a time. */
  wait(bytes: number): Promise<void> {
    if (this.#length >= bytes) return Promise.resolve();
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.#waiter !== undefined) return Promise.reject(new Error("ByteQueue: two concurrent waits"));
    return new Promise((resolve, reject) => {
      this.#waiter = { bytes, resolve, reject };
    });
  }

  /** The unsigned 32-bit big-endian number at the front, not consumed. */
  peekUInt32(): number {
    return this.#front(4).readUInt32BE(0);
  }

  /**
   * Consumes `bytes` (which must be buffered) and returns a copy of them
   * (the chunk's memory may be read into again). Only for headers.
   */
  take(bytes: number): Buffer {
    const copy = Buffer.from(this.#front(bytes));
    this.skip(bytes);
    return copy;
  }

  /** Consumes up to `bytes` buffered bytes into `target` at `targetOffset`; returns how many. */
  copyInto(target: Uint8Array, targetOffset: number, bytes: number): number {
    let copied = 0;
    while (copied < bytes && this.#length > 0) {
      const chunk = this.#chunks[0]!;
      const n = Math.min(bytes - copied, chunk.length - this.#head);
      chunk.copy(target, targetOffset + copied, this.#head, this.#head + n);
      copied += n;
      this.#consume(n);
    }
    return copied;
  }

  /** Consumes up to `bytes` buffered bytes, discarding them; returns how many. */
  skip(bytes: number): number {
    let skipped = 0;
    while (skipped < bytes && this.#length > 0) {
      const n = Math.min(bytes - skipped, this.#chunks[0]!.length - this.#head);
      skipped += n;
      this.#consume(n);
    }
    return skipped;
  }

  /** Reads exactly `bytes` into `target`, waiting for them to arrive. */
  async readInto(target: Uint8Array, targetOffset: number, bytes: number): Promise<void> {
    let done = this.copyInto(target, targetOffset, bytes);
    while (done < bytes) {
      await this.wait(1);
      done += this.copyInto(target, targetOffset + done, bytes - done);
    }
  }

  /** Consumes exactly `bytes`, waiting for them to arrive. */
  async discard(bytes: number): Promise<void> {
    let done = this.skip(bytes);
    while (done < bytes) {
      await this.wait(1);
      done += this.skip(bytes - done);
    }
  }

  /** Waits for and consumes `bytes` (a header), as a Buffer. */
  async read(bytes: number): Promise<Buffer> {
    if (this.#length < bytes) await this.wait(bytes);
    return this.take(bytes);
  }

  #front(bytes: number): Buffer {
    if (bytes > this.#length) throw new RangeError(`ByteQueue: ${bytes} bytes asked, ${this.#length} buffered`);
    const first = this.#chunks[0]!;
    if (first.length - this.#head >= bytes) return first.subarray(this.#head, this.#head + bytes);
    const joined = Buffer.allocUnsafe(bytes);
    let at = 0;
    let head = this.#head;
    for (const chunk of this.#chunks) {
      const n = Math.min(bytes - at, chunk.length - head);
      chunk.copy(joined, at, head, head + n);
      at += n;
      head = 0;
      if (at === bytes) break;
    }
    return joined;
  }

  #consume(bytes: number): void {
    this.#head += bytes;
    this.#length -= bytes;
    if (this.#head === this.#chunks[0]!.length) {
      this.#chunks.shift();
      this.#releases.shift()?.();
      this.#head = 0;
    }
  }
}
