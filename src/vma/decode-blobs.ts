// The header's blob buffer (docs/vma-format.md section 3): a reserved zero byte,
// then blobs of a 2-byte little-endian length and that many bytes, back to back.
import type { VmaProblem } from "./reader-types.js";

const BLOB_PREFIX_SIZE = 2;

export interface BlobTable {
  /** Payloads keyed by their blob's relative offset (the one pointers hold). */
  readonly blobs: ReadonlyMap<number, Buffer>;
  readonly problems: readonly VmaProblem[];
}

/**
 * Walks the blob chain like Proxmox's reader (from relative offset 1 while a
 * length prefix fits) and, being strict, also reports a nonzero reserved byte,
 * a blob running past blob_buffer_size and a stray byte after the last blob.
 * `start` is the absolute offset of the blob buffer in `header`.
 */
export function decodeBlobs(header: Buffer, start: number, size: number): BlobTable {
  const blobs = new Map<number, Buffer>();
  const problems: VmaProblem[] = [];
  if (size === 0) {
    problems.push({ offset: 52, message: "blob_buffer_size is 0; expected at least 1 for the reserved zero byte" });
    return { blobs, problems };
  }
  if (header[start] !== 0) {
    problems.push({
      offset: start,
      message: `blob buffer byte 0 is ${header[start]}; expected the reserved zero byte`,
    });
  }
  let position = 1;
  while (position + BLOB_PREFIX_SIZE <= size) {
    const length = header.readUInt16LE(start + position);
    const payloadStart = position + BLOB_PREFIX_SIZE;
    if (payloadStart + length > size) {
      problems.push({
        offset: start + position,
        message: `blob at relative offset ${position} has length ${length} and runs past blob_buffer_size ${size}`,
      });
      return { blobs, problems };
    }
    blobs.set(position, header.subarray(start + payloadStart, start + payloadStart + length));
    position = payloadStart + length;
  }
  if (position < size) {
    problems.push({
      offset: start + position,
      message:
        `${size - position} stray byte at the end of the blob buffer; expected another blob or the end at ` +
        `relative offset ${position}`,
    });
  }
  return { blobs, problems };
}

export type StringBlobResult = { readonly name: string } | { readonly error: string };

/** Resolves a pointer to a NUL-terminated string blob, as names are stored. */
export function resolveString(table: BlobTable, pointer: number): StringBlobResult {
  const payload = table.blobs.get(pointer);
  if (payload === undefined) {
    return { error: `pointer ${pointer} is not the start of a blob` };
  }
  if (payload.length === 0 || payload[payload.length - 1] !== 0) {
    return { error: `blob at relative offset ${pointer} is not a NUL-terminated string` };
  }
  const text = payload.subarray(0, payload.length - 1);
  if (text.includes(0)) {
    return { error: `string blob at relative offset ${pointer} has a NUL before its end` };
  }
  return { name: text.toString("utf8") };
}
