// Small byte helpers shared by the header and extent decoders.

const ZEROS = Buffer.alloc(4096);

/** Absolute index of the first non-zero byte of bytes[start, end), or -1. */
export function firstNonZero(bytes: Buffer, start: number, end: number): number {
  // Compare in native 4 KiB steps; only a dirty step is searched byte by byte.
  for (let step = start; step < end; step += ZEROS.length) {
    const stepEnd = Math.min(end, step + ZEROS.length);
    if (bytes.subarray(step, stepEnd).equals(ZEROS.subarray(0, stepEnd - step))) continue;
    for (let index = step; index < stepEnd; index++) {
      if (bytes[index] !== 0) return index;
    }
  }
  return -1;
}

/** "56 4d 41 00": bytes as spaced hex, for messages. */
export function hexBytes(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .toString("hex")
    .replace(/(..)(?!$)/g, "$1 ");
}

/** "0x00ff": a 16-bit mask for messages. */
export function hexMask(mask: number): string {
  return `0x${mask.toString(16).padStart(4, "0")}`;
}

/** Canonical uuid text of 16 raw bytes. */
export function formatUuid(bytes: Uint8Array): string {
  const hex = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** Reads a u64 BE; returns a number when it is a safe integer, else the bigint. */
export function readUint64(bytes: Buffer, offset: number): number | bigint {
  const value = bytes.readBigUInt64BE(offset);
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}
