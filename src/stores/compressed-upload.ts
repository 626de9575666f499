// Compression as a stage in front of any store's upload: the archive bytes
// go into a compressor, whose output is written to the store's upload with
// its back-pressure. write() resolves once the compressor took the chunks
// (a zlib stream has consumed them, a child's pipe has them), so the
// caller may reuse their memory; the compressor stalls while the store is
// busy, and so does write(). Commit ends the compressor, waits until all of
// its output is in the store, checks it exited cleanly, then commits.
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { availableParallelism } from "node:os";
import type { Readable, Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { constants, createGzip, createZstdCompress } from "node:zlib";
import type { ArchiveRef, ArchiveUpload } from "./archive-store.js";

export type Compression = "none" | "zstd" | "gzip";

/** What each compression appends to the archive's name (`.vma` + this). */
export const COMPRESSION_SUFFIX: Readonly<Record<Compression, string>> = { none: "", zstd: ".zst", gzip: ".gz" };

/** How long a failed write waits for the compressor to say why it ended. */
const CAUSE_WAIT_MS = 2000;

/** vzdump's levels: zstd's default 3; gzip's default 6. */
export const DEFAULT_LEVEL: Readonly<Record<Exclude<Compression, "none">, number>> = { zstd: 3, gzip: 6 };

export interface CompressionOptions {
  readonly compression: Compression;
  /** Default DEFAULT_LEVEL. */
  readonly level?: number;
  /**
   * zstd only: "program" pipes through the zstd program with one worker
   * thread per core (as vzdump does); "zlib" uses Node's built-in zstd in
   * one thread (its worker threads break the stream in Node 24).
   */
  readonly zstdEngine?: "program" | "zlib";
}

/** A running compressor: bytes in, compressed bytes out. */
interface Compressor {
  readonly input: Writable;
  readonly output: Readable;
  /** Resolves when the compressor finished cleanly; rejects with why it did not. */
  readonly finished: Promise<void>;
  stop(): void;
}

/** The compressed bytes of the archive go into `upload`; without compression `upload` itself. */
export function compressUpload(upload: ArchiveUpload, options: CompressionOptions): ArchiveUpload {
  if (options.compression === "none") return upload;
  return new CompressedUpload(upload, startCompressor(options));
}

function startCompressor(options: CompressionOptions): Compressor {
  if (options.compression === "gzip") return zlibCompressor(createGzip({ level: options.level ?? DEFAULT_LEVEL.gzip }));
  const level = options.level ?? DEFAULT_LEVEL.zstd;
  if (options.zstdEngine === "zlib") {
    return zlibCompressor(createZstdCompress({ params: { [constants.ZSTD_c_compressionLevel]: level } }));
  }
  return zstdProgram(level);
}

function zlibCompressor(stream: ReturnType<typeof createGzip> | ReturnType<typeof createZstdCompress>): Compressor {
  const finished = new Promise<void>((resolve, reject) => {
    stream.once("end", resolve);
    stream.once("error", reject);
  });
  finished.catch(() => undefined);
  return { input: stream, output: stream, finished, stop: () => stream.destroy() };
}

/** `zstd -q -<level> -T<cores> -c` as a child process. */
function zstdProgram(level: number): Compressor {
  const child: ChildProcessByStdio<Writable, Readable, Readable> = spawn(
    "zstd",
    ["-q", `-${level}`, `-T${availableParallelism()}`, "-c"],
    { stdio: ["pipe", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    stderr = (stderr + text).slice(-2000);
  });
  // A child that died leaves a broken pipe: the exit status below says why.
  child.stdin.on("error", () => undefined);
  const finished = new Promise<void>((resolve, reject) => {
    child.once("error", (error) => reject(new Error(`cannot run zstd: ${error.message}`, { cause: error })));
    child.once("close", (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`zstd failed (${signal ?? `exit ${code}`})${stderr === "" ? "" : `: ${stderr.trim()}`}`));
    });
  });
  finished.catch(() => undefined);
  return {
    input: child.stdin,
    output: child.stdout,
    finished,
    stop: () => {
      child.stdin.destroy();
      child.kill("SIGKILL");
    },
  };
}

class CompressedUpload implements ArchiveUpload {
  private readonly upload: ArchiveUpload;
  private readonly compressor: Compressor;
  /** Settles when every compressed byte went into the upload (or the first failure). */
  private readonly pumped: Promise<void>;
  private failure: unknown = undefined;
  private ended = false;

  constructor(upload: ArchiveUpload, compressor: Compressor) {
    this.upload = upload;
    this.compressor = compressor;
    compressor.input.on("error", (error) => this.fail(error));
    this.pumped = this.pump();
    this.pumped.catch(() => undefined);
  }

  get pending(): ArchiveRef {
    return this.upload.pending;
  }

  get location(): string {
    return this.upload.location;
  }

  get bytesWritten(): number {
    return this.upload.bytesWritten;
  }

  async write(chunks: readonly Uint8Array[]): Promise<void> {
    this.throwIfFailed();
    const taken: Array<Promise<void>> = [];
    for (const chunk of chunks) {
      if (chunk.byteLength === 0) continue;
      taken.push(
        new Promise<void>((resolve, reject) => {
          this.compressor.input.write(chunk, (error) => (error ? reject(error) : resolve()));
        }),
      );
    }
    try {
      await Promise.all(taken);
    } catch (error) {
      // A broken pipe says little: the compressor's own end says why (could not start, crashed).
      this.fail(await this.causeOf(error));
    }
    this.throwIfFailed();
  }

  async commit(): Promise<ArchiveRef> {
    this.throwIfFailed();
    this.ended = true;
    this.compressor.input.end();
    await this.pumped;
    await this.compressor.finished;
    this.throwIfFailed();
    return this.upload.commit();
  }

  async abort(): Promise<void> {
    this.fail(new Error("the compressed upload was aborted"));
    this.compressor.stop();
    await this.pumped.catch(() => undefined);
    await this.upload.abort();
  }

  /** Moves the compressor's output into the upload, one chunk at a time (the store's back-pressure). */
  private async pump(): Promise<void> {
    let storeError: unknown;
    try {
      for await (const chunk of this.compressor.output as AsyncIterable<Buffer>) {
        this.throwIfFailed();
        await this.upload.write([chunk]).catch((error: unknown) => {
          storeError = error;
          throw error;
        });
      }
      if (!this.ended) throw new Error("the compressor stopped before the archive ended");
    } catch (error) {
      // The store's own error says why; a compressor that ended early says why itself.
      const cause = error === storeError ? error : await this.causeOf(error);
      this.fail(cause);
      // Unblocks writers waiting on a compressor nobody reads any more.
      this.compressor.stop();
      throw cause;
    }
  }

  /** Why the compressor failed, when it says so soon; otherwise `error` itself. */
  private async causeOf(error: unknown): Promise<unknown> {
    const settled = await Promise.race([
      this.compressor.finished.then(
        () => undefined,
        (reason: unknown) => reason,
      ),
      sleep(CAUSE_WAIT_MS, undefined, { ref: false }),
    ]);
    return settled ?? error;
  }

  private fail(error: unknown): void {
    this.failure ??= error;
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}
