// Opens an archive file or stream and hands out its decompressed bytes. The
// compression is told by the first bytes, never by the file name: gzip
// (1f 8b) and zstd (28 b5 2f fd, or a skippable frame first) both through
// node:zlib (Node 24 has zstd; it needs half the CPU time of the pure-JS
// fzstd used before, and less memory). Anything else is passed through as
// is (the reader then checks the magic). zlib is loaded only for compressed
// input (start-up time).
import { open } from "node:fs/promises";
import type { Readable } from "node:stream";
import { FileChunkSource, type RecyclableChunks } from "./file-chunk-source.js";

export type ArchiveCompression = "none" | "gzip" | "zstd";

export interface OpenedArchive {
  readonly compression: ArchiveCompression;
  /** The archive's bytes after decompression, in order. Iterate once. */
  readonly chunks: AsyncIterable<Buffer> | RecyclableChunks;
  /** Size of the input in bytes when it is a regular file, for progress. */
  readonly inputSize: number | undefined;
  /** Input bytes (compressed, as stored) consumed so far. */
  inputBytesRead(): number;
}

/** The compressed stream is damaged or cut short; `offset` counts decompressed bytes. */
export class CompressedDataError extends Error {
  readonly offset: number;

  constructor(compression: ArchiveCompression, offset: number, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(`${compression} data is damaged or truncated after ${offset} decompressed bytes: ${reason}`, { cause });
    this.name = "CompressedDataError";
    this.offset = offset;
  }
}

/** The input uses a compression we cannot read. */
export class UnsupportedCompressionError extends Error {
  constructor(format: string, hint: string) {
    super(`the archive is ${format}-compressed, which is not supported; ${hint}`);
    this.name = "UnsupportedCompressionError";
  }
}

/** Big reads keep the per-chunk overhead negligible next to the copy from the page cache. */
export const ARCHIVE_READ_CHUNK = 4 * 1024 * 1024;
const INFLATE_CHUNK = 1024 * 1024;
const MAGIC_BYTES = 4;

/** Opens `path`, or stdin when `path` is "-". */
export async function openArchive(path: string): Promise<OpenedArchive> {
  if (path === "-") return openArchiveStream(process.stdin, undefined);
  // Open first so that a missing file fails here, with its fs error.
  const handle = await open(path, "r");
  let compression: ArchiveCompression;
  let size: number | undefined;
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) {
      const stream = handle.createReadStream({ highWaterMark: ARCHIVE_READ_CHUNK, autoClose: true });
      return openArchiveStream(stream, undefined);
    }
    size = stat.size;
    const magic = Buffer.alloc(MAGIC_BYTES);
    const { bytesRead } = await handle.read(magic, 0, MAGIC_BYTES, 0);
    compression = detectCompression(magic.subarray(0, bytesRead));
  } catch (error) {
    await handle.close();
    throw error;
  }
  // A regular file is read into reused buffers (see file-chunk-source.ts).
  const source = new FileChunkSource(handle, ARCHIVE_READ_CHUNK);
  const inputBytesRead = (): number => source.position;
  if (compression === "none") return { compression, chunks: source, inputSize: size, inputBytesRead };
  // Decompressors may hold on to their input: its chunks are never recycled.
  const raw = (async function* (): AsyncGenerator<Buffer, void, undefined> {
    yield* source;
  })();
  const chunks = inflate(compression, raw);
  return { compression, chunks, inputSize: size, inputBytesRead };
}

/** Detects the compression of `input` from its first bytes and decompresses it. */
export async function openArchiveStream(input: Readable, inputSize: number | undefined): Promise<OpenedArchive> {
  const iterator = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let bytesRead = 0;
  const peeked: Buffer[] = [];
  let peekedLength = 0;
  while (peekedLength < MAGIC_BYTES) {
    const next = await iterator.next();
    if (next.done === true) break;
    peeked.push(next.value);
    peekedLength += next.value.length;
    bytesRead += next.value.length;
  }
  const first = Buffer.concat(peeked, peekedLength).subarray(0, MAGIC_BYTES);
  const compression = detectCompression(first);

  async function* raw(): AsyncGenerator<Buffer, void, undefined> {
    try {
      yield* peeked;
      for (;;) {
        const next = await iterator.next();
        if (next.done === true) return;
        bytesRead += next.value.length;
        yield next.value;
      }
    } finally {
      // Ends (destroys) the input stream when the reader stops early.
      await iterator.return?.();
    }
  }

  const chunks = compression === "none" ? raw() : inflate(compression, raw());
  return { compression, chunks, inputSize, inputBytesRead: () => bytesRead };
}

function detectCompression(first: Buffer): ArchiveCompression {
  if (first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b) return "gzip";
  if (first.length === MAGIC_BYTES) {
    const magic = first.readUInt32LE(0);
    // A zstd frame, or a skippable frame (0x184d2a50..5f) such as pzstd writes first.
    if (magic === 0xfd2fb528 || (magic & 0xfffffff0) === 0x184d2a50) return "zstd";
  }
  if (first.length >= 3 && first.toString("latin1", 0, 3) === "BZh") {
    throw new UnsupportedCompressionError("bzip2", "decompress it first, e.g. bzcat FILE | vmabackup vma verify -");
  }
  if (first.length === MAGIC_BYTES && first.toString("latin1", 1, 4) === "LZO") {
    throw new UnsupportedCompressionError("lzop", "decompress it first, e.g. lzop -dc FILE | vmabackup vma verify -");
  }
  return "none";
}

/** Decompresses `raw` through a zlib stream; damaged data becomes CompressedDataError. */
async function* inflate(
  compression: "gzip" | "zstd",
  raw: AsyncGenerator<Buffer>,
): AsyncGenerator<Buffer, void, undefined> {
  const [{ Readable }, { createGunzip, createZstdDecompress }] = await Promise.all([
    import("node:stream"),
    import("node:zlib"),
  ]);
  const source = Readable.from(raw, { objectMode: false });
  const inflater =
    compression === "gzip"
      ? createGunzip({ chunkSize: INFLATE_CHUNK })
      : createZstdDecompress({ chunkSize: INFLATE_CHUNK });
  source.on("error", (error) => inflater.destroy(error));
  source.pipe(inflater);
  let produced = 0;
  try {
    for await (const chunk of inflater as AsyncIterable<Buffer>) {
      produced += chunk.length;
      yield chunk;
    }
  } catch (error) {
    throw isZlibError(error) ? new CompressedDataError(compression, produced, error) : error;
  } finally {
    inflater.destroy();
    source.destroy();
  }
}

/** zlib's own codes (Z_BUF_ERROR for a cut-short stream) and zstd's (ZSTD_error_*). */
function isZlibError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && (code.startsWith("Z_") || code.startsWith("ZSTD_"));
}
