// The strict streaming VMA reader. It consumes the archive strictly in order
// (no seeking, so stdin works), holds at most one extent (3.7 MiB) plus the
// input chunk it came in, and yields events: the header, each extent with its
// accepted slots and data, every problem with its archive offset, and a
// summary with the clusters that never arrived.
//
// Cluster data is never copied or hashed here: only the 512-byte extent
// headers are checksummed (the format protects nothing else).
//
// After an extent header with a bad checksum nothing in it can be believed,
// not even block_count, so the reader looks for the next valid extent header
// where one could start (512 + n * 4096 bytes further, n <= 944) and goes on
// from there; the damaged extent's clusters then show up as missing.
import { BLOCK_SIZE, EXTENT_HEADER_SIZE, HEADER_FIXED_SIZE, MAX_BLOCKS_PER_EXTENT } from "./constants.js";
import { decodeExtentHeader, isValidExtentHeader } from "./decode-extent.js";
import { decodeHeader, decodeHeaderSize } from "./decode-header.js";
import { popcount16 } from "./block-mask.js";
import type { RecyclableChunks } from "./file-chunk-source.js";
import { ChunkQueue } from "./reader-chunk-queue.js";
import { ClusterTracker } from "./reader-cluster-tracker.js";
import type { VmaEvent, VmaHeader, VmaProblem, VmaSlot } from "./reader-types.js";

/** How far after a damaged extent header the next one may start. */
const RESYNC_CANDIDATES = MAX_BLOCKS_PER_EXTENT + 1;

/**
 * Reads a (decompressed) VMA archive from `source`. Stop iterating at any
 * time (e.g. after the header); the source's iterator is then closed. An
 * extent's data is valid until the next event is asked for: a recyclable
 * source reads into that memory again afterwards.
 */
export function readVma(
  source: AsyncIterable<Uint8Array> | RecyclableChunks,
): AsyncGenerator<VmaEvent, void, undefined> {
  return new VmaStreamReader(source).events();
}

class VmaStreamReader {
  private readonly input: ChunkQueue;
  private problemCount = 0;
  private extents = 0;
  private clusters = 0;
  private storedBlocks = 0;

  constructor(source: AsyncIterable<Uint8Array> | RecyclableChunks) {
    this.input = new ChunkQueue(source);
  }

  async *events(): AsyncGenerator<VmaEvent, void, undefined> {
    try {
      const header = yield* this.readHeader();
      const tracker = new ClusterTracker(header?.devices ?? new Map());
      if (header !== undefined) yield* this.readExtents(header, tracker);
      yield {
        type: "end",
        summary: {
          archiveBytes: this.input.received,
          extents: this.extents,
          clusters: this.clusters,
          storedBlocks: this.storedBlocks,
          problemCount: this.problemCount,
          // Without a header nothing is known to be missing.
          missing: header === undefined ? [] : tracker.missing(),
        },
      };
    } finally {
      await this.input.close();
    }
  }

  private problem(offset: number, message: string): VmaEvent {
    return this.reported({ offset, message });
  }

  private reported(problem: VmaProblem): VmaEvent {
    this.problemCount += 1;
    return { type: "problem", problem };
  }

  /** Yields the header's problems and the header; returns it when it can be trusted. */
  private async *readHeader(): AsyncGenerator<VmaEvent, VmaHeader | undefined, undefined> {
    const input = this.input;
    if (!(await input.ensure(HEADER_FIXED_SIZE))) {
      if (input.length === 0) {
        yield this.problem(0, "the archive is empty; expected a VMA header");
        return undefined;
      }
      const prefix = input.peek(input.length);
      const sizeResult = decodeHeaderSize(prefix);
      yield "problem" in sizeResult
        ? this.reported(sizeResult.problem)
        : this.problem(
            prefix.length,
            `the archive ends after ${prefix.length} bytes; expected a header of ${sizeResult.headerSize} bytes`,
          );
      return undefined;
    }
    const sizeResult = decodeHeaderSize(input.peek(HEADER_FIXED_SIZE));
    if ("problem" in sizeResult) {
      yield this.reported(sizeResult.problem);
      return undefined;
    }
    if (!(await input.ensure(sizeResult.headerSize))) {
      yield this.problem(
        input.length,
        `the archive ends after ${input.length} bytes; expected a header of ${sizeResult.headerSize} bytes`,
      );
      return undefined;
    }
    // A copy, so the header (configs are views into it) does not pin a whole input chunk.
    const decoded = decodeHeader(Buffer.from(input.take(sizeResult.headerSize)));
    for (const problem of decoded.problems) yield this.reported(problem);
    if (!decoded.trusted || decoded.header === undefined) return undefined;
    yield { type: "header", header: decoded.header };
    return decoded.header;
  }

  private async *readExtents(header: VmaHeader, tracker: ClusterTracker): AsyncGenerator<VmaEvent, void, undefined> {
    const input = this.input;
    for (;;) {
      // The consumer came back for more, so it is done with the previous extent's data.
      input.releaseRetired();
      const offset = input.position;
      if (!(await input.ensure(EXTENT_HEADER_SIZE))) {
        // EOF exactly at an extent boundary is the normal end of an archive.
        if (input.length > 0) {
          yield this.problem(
            offset,
            `the archive ends ${input.length} bytes into an extent header; expected 512 bytes or the end of the ` +
              `archive`,
          );
        }
        return;
      }
      const decoded = decodeExtentHeader(input.take(EXTENT_HEADER_SIZE), offset, header.uuidBytes);
      for (const problem of decoded.problems) yield this.reported(problem);
      if (!decoded.checksumValid) {
        if (yield* this.resynchronize(offset, header)) continue;
        return;
      }
      this.extents += 1;
      const dataLength = decoded.blockCount * BLOCK_SIZE;
      if (!decoded.usable) {
        // block_count is covered by the checksum, so the next extent is found.
        const skipped = await input.skip(dataLength);
        if (skipped < dataLength) {
          yield this.truncated(offset, dataLength, skipped);
          return;
        }
        continue;
      }
      if (!(await input.ensure(dataLength))) {
        yield this.truncated(offset, dataLength, input.length);
        return;
      }
      const data = input.takeViews(dataLength);
      const slots: VmaSlot[] = [];
      let dataOffset = 0;
      for (const raw of decoded.slots) {
        const verdict = tracker.check(raw);
        for (const problem of verdict.problems) yield this.reported(problem);
        if (verdict.accepted) {
          slots.push({ index: raw.index, devId: raw.devId, cluster: raw.cluster, mask: raw.mask, dataOffset });
          this.clusters += 1;
          this.storedBlocks += popcount16(raw.mask);
        }
        dataOffset += popcount16(raw.mask) * BLOCK_SIZE;
      }
      yield { type: "extent", extent: { offset, blockCount: decoded.blockCount, slots, data } };
    }
  }

  private truncated(offset: number, dataLength: number, present: number): VmaEvent {
    return this.problem(
      offset,
      `the archive ends inside the extent at ${offset}: its header announces ${dataLength} data bytes, only ` +
        `${present} follow`,
    );
  }

  /**
   * Looks for the next valid extent header after the damaged one at `damaged`
   * and leaves the input there. Returns false when none is found (the rest of
   * the archive is then not read).
   */
  private async *resynchronize(damaged: number, header: VmaHeader): AsyncGenerator<VmaEvent, boolean, undefined> {
    const input = this.input;
    const from = input.position;
    for (let candidate = 0; candidate < RESYNC_CANDIDATES; candidate++) {
      if (!(await input.ensure(EXTENT_HEADER_SIZE))) {
        const end = input.position + input.length;
        if (end > from) {
          yield this.problem(
            from,
            `${end - from} bytes after the unreadable extent header at ${damaged} up to the end of the archive were ` +
              `not read`,
          );
        }
        return false;
      }
      if (isValidExtentHeader(input.peek(EXTENT_HEADER_SIZE), header.uuidBytes)) {
        if (input.position > from) {
          yield this.problem(
            from,
            `${input.position - from} bytes after the unreadable extent header at ${damaged} were skipped; the next ` +
              `valid extent header is at ${input.position}`,
          );
        }
        return true;
      }
      if ((await input.skip(BLOCK_SIZE)) < BLOCK_SIZE) {
        yield this.problem(
          from,
          `${input.position - from} bytes after the unreadable extent header at ${damaged} up to the end of the ` +
            `archive were not read`,
        );
        return false;
      }
    }
    yield this.problem(
      from,
      `no valid extent header within ${input.position - from} bytes after the unreadable one at ${damaged}; the ` +
        `rest of the archive was not read`,
    );
    return false;
  }
}
