// Checks an uncompressed archive file synchronously, for server startup
// (recovery runs before anything is served and cannot await): the header
// and every extent header are decoded and checked as the streaming reader
// does (same decoders, same cluster tracker), the data blocks are skipped by
// position. The format protects only those headers, so the verdict on
// validity and completeness is the reader's; only the data is not read.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { BLOCK_SIZE, CLUSTER_SIZE, EXTENT_HEADER_SIZE, HEADER_FIXED_SIZE } from "./constants.js";
import { decodeExtentHeader } from "./decode-extent.js";
import { decodeHeader, decodeHeaderSize } from "./decode-header.js";
import { ClusterTracker, describeMissing } from "./reader-cluster-tracker.js";
import type { VmaHeader } from "./reader-types.js";

export interface ArchiveScan {
  /** The header, when it could be trusted. */
  readonly header: VmaHeader | undefined;
  /** The first problem found, or undefined when the archive is valid and complete. */
  readonly problem: string | undefined;
  /** Per dev_id, the device bytes stored as data (the rest are zero blocks). */
  readonly storedBytes: ReadonlyMap<number, number>;
}

/** Scans the archive at `path`. Throws the fs error when it cannot be read. */
export function scanArchiveFileSync(path: string): ArchiveScan {
  const fd = openSync(path, "r");
  try {
    return scan(fd, fstatSync(fd).size);
  } finally {
    closeSync(fd);
  }
}

function readAt(fd: number, position: number, length: number): Buffer {
  const buffer = Buffer.alloc(length);
  let filled = 0;
  while (filled < length) {
    const read = readSync(fd, buffer, filled, length - filled, position + filled);
    if (read === 0) break;
    filled += read;
  }
  return buffer.subarray(0, filled);
}

function scan(fd: number, fileSize: number): ArchiveScan {
  const storedBytes = new Map<number, number>();
  const failed = (problem: string, header?: VmaHeader): ArchiveScan => ({ header, problem, storedBytes });
  const sizeResult = decodeHeaderSize(readAt(fd, 0, HEADER_FIXED_SIZE));
  if ("problem" in sizeResult) return failed(sizeResult.problem.message);
  const headerBytes = readAt(fd, 0, sizeResult.headerSize);
  if (headerBytes.length < sizeResult.headerSize) return failed(`the archive ends inside its header`);
  const decoded = decodeHeader(headerBytes);
  const header = decoded.header;
  if (!decoded.trusted || header === undefined) return failed(decoded.problems[0]?.message ?? "untrusted header");
  if (decoded.problems.length > 0) return failed(decoded.problems[0]!.message, header);
  const tracker = new ClusterTracker(header.devices);
  for (let offset = header.headerSize; offset < fileSize; ) {
    const bytes = readAt(fd, offset, EXTENT_HEADER_SIZE);
    if (bytes.length < EXTENT_HEADER_SIZE)
      return failed(`the archive ends inside the extent header at ${offset}`, header);
    const extent = decodeExtentHeader(bytes, offset, header.uuidBytes);
    if (!extent.usable || extent.problems.length > 0) {
      return failed(extent.problems[0]?.message ?? `unusable extent at ${offset}`, header);
    }
    for (const slot of extent.slots) {
      const verdict = tracker.check(slot);
      if (!verdict.accepted || verdict.problems.length > 0) {
        return failed(verdict.problems[0]?.message ?? `rejected slot at ${slot.offset}`, header);
      }
      const size = header.devices.get(slot.devId)?.size ?? 0;
      storedBytes.set(slot.devId, (storedBytes.get(slot.devId) ?? 0) + storedInDevice(slot.cluster, slot.mask, size));
    }
    offset += EXTENT_HEADER_SIZE + extent.blockCount * BLOCK_SIZE;
    if (offset > fileSize) return failed(`the archive ends inside the extent data before ${offset}`, header);
  }
  const missing = tracker.missing();
  if (missing.length > 0) return failed(describeMissing(missing[0]!), header);
  return { header, problem: undefined, storedBytes };
}

/** Device bytes of the stored blocks of one cluster (the last block may reach past the device end). */
export function storedInDevice(cluster: number, mask: number, deviceSize: number): number {
  let bytes = 0;
  for (let block = 0; block < CLUSTER_SIZE / BLOCK_SIZE; block++) {
    if ((mask & (1 << block)) === 0) continue;
    const start = cluster * CLUSTER_SIZE + block * BLOCK_SIZE;
    bytes += Math.max(0, Math.min(BLOCK_SIZE, deviceSize - start));
  }
  return bytes;
}
