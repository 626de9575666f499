// Decodes and checks one 512-byte extent header (docs/vma-format.md section 5).
//
// Proxmox checks, in this order: MD5, uuid, magic together with the reserved
// field, then the data. We keep that order. Being strict, we also check that
// block_count equals the blocks the masks store, that unused slots are all
// zero and that the reserved bits of used slots are zero.
import { createHash } from "node:crypto";
import { EXTENT_HEADER_SIZE, EXTENT_OFFSET, EXTENT_SLOTS, VMA_EXTENT_MAGIC } from "./constants.js";
import { popcount16 } from "./block-mask.js";
import { hexBytes } from "./decode-bytes.js";
import type { VmaProblem } from "./reader-types.js";

const MD5_SIZE = 16;
const UUID_SIZE = 16;
const BLOCK_INFO_SIZE = 8;
const ZERO_MD5 = Buffer.alloc(MD5_SIZE);

/** A used blockinfo slot (dev_id != 0), as stored. */
export interface RawSlot {
  readonly index: number;
  readonly devId: number;
  readonly cluster: number;
  readonly mask: number;
  /** Archive offset of the slot's 8 blockinfo bytes. */
  readonly offset: number;
}

export interface ExtentHeaderResult {
  /** False when the MD5 does not match: no field of the header can be believed. */
  readonly checksumValid: boolean;
  /**
   * True when the slots may be used: the checksum, uuid, magic, reserved field
   * and block_count are all as required. Otherwise the extent's data is skipped.
   */
  readonly usable: boolean;
  readonly blockCount: number;
  /** Used slots in slot order (empty unless the checksum is valid). */
  readonly slots: readonly RawSlot[];
  readonly problems: readonly VmaProblem[];
}

/** True when `bytes` (512 long) looks like an extent of the archive with `uuid`. */
export function isValidExtentHeader(bytes: Buffer, uuid: Buffer): boolean {
  return (
    bytes.subarray(EXTENT_OFFSET.magic, EXTENT_OFFSET.magic + 4).equals(VMA_EXTENT_MAGIC) &&
    bytes.subarray(EXTENT_OFFSET.uuid, EXTENT_OFFSET.uuid + UUID_SIZE).equals(uuid) &&
    extentMd5(bytes).equals(bytes.subarray(EXTENT_OFFSET.md5, EXTENT_OFFSET.md5 + MD5_SIZE))
  );
}

/** Decodes the extent header `bytes` found at archive offset `offset`. */
export function decodeExtentHeader(bytes: Buffer, offset: number, uuid: Buffer): ExtentHeaderResult {
  if (bytes.length !== EXTENT_HEADER_SIZE) {
    throw new RangeError(`an extent header is ${EXTENT_HEADER_SIZE} bytes, got ${bytes.length}`);
  }
  const problems: VmaProblem[] = [];
  const magic = bytes.subarray(EXTENT_OFFSET.magic, EXTENT_OFFSET.magic + 4);
  const magicValid = magic.equals(VMA_EXTENT_MAGIC);
  const stored = bytes.subarray(EXTENT_OFFSET.md5, EXTENT_OFFSET.md5 + MD5_SIZE);
  const computed = extentMd5(bytes);
  if (!computed.equals(stored)) {
    // Without a valid checksum the magic tells apart a damaged extent header
    // from bytes that are no extent at all (trailing garbage, lost sync).
    const message = magicValid
      ? `extent header checksum mismatch: md5 of bytes ${offset}..${offset + EXTENT_HEADER_SIZE - 1} is ` +
        `${computed.toString("hex")}, the header stores ${stored.toString("hex")}`
      : `expected an extent header (magic "56 4d 41 45") or the end of the archive, found "${hexBytes(magic)}"`;
    problems.push({ offset, message });
    return { checksumValid: false, usable: false, blockCount: 0, slots: [], problems };
  }

  const extentUuid = bytes.subarray(EXTENT_OFFSET.uuid, EXTENT_OFFSET.uuid + UUID_SIZE);
  if (!extentUuid.equals(uuid)) {
    problems.push({
      offset: offset + EXTENT_OFFSET.uuid,
      message:
        `extent uuid ${extentUuid.toString("hex")} differs from the archive uuid ${uuid.toString("hex")}: an ` +
        `extent of another archive`,
    });
  }
  if (!magicValid) {
    problems.push({ offset, message: `extent magic "${hexBytes(magic)}"; expected "56 4d 41 45"` });
  }
  const reserved = bytes.readUInt16BE(EXTENT_OFFSET.reserved);
  if (reserved !== 0) {
    problems.push({
      offset: offset + EXTENT_OFFSET.reserved,
      message: `extent reserved field is ${reserved}; expected 0`,
    });
  }
  const headerProblems = problems.length;

  const blockCount = bytes.readUInt16BE(EXTENT_OFFSET.blockCount);
  const slots: RawSlot[] = [];
  let storedBlocks = 0;
  for (let index = 0; index < EXTENT_SLOTS; index++) {
    const entry = EXTENT_OFFSET.blockInfo + BLOCK_INFO_SIZE * index;
    // Bytes: [0..1] mask BE, [2] reserved, [3] dev_id, [4..7] cluster BE.
    const mask = bytes.readUInt16BE(entry);
    const reservedBits = bytes[entry + 2]!;
    const devId = bytes[entry + 3]!;
    const cluster = bytes.readUInt32BE(entry + 4);
    if (devId === 0) {
      if (mask !== 0 || reservedBits !== 0 || cluster !== 0) {
        problems.push({
          offset: offset + entry,
          message: `blockinfo slot ${index} has dev_id 0 (unused) but is not all zero`,
        });
      }
      continue;
    }
    if (reservedBits !== 0) {
      problems.push({
        offset: offset + entry + 2,
        message: `blockinfo slot ${index} reserved bits are ${reservedBits}; expected 0`,
      });
    }
    storedBlocks += popcount16(mask);
    slots.push({ index, devId, cluster, mask, offset: offset + entry });
  }
  const blockCountValid = storedBlocks === blockCount;
  if (!blockCountValid) {
    problems.push({
      offset: offset + EXTENT_OFFSET.blockCount,
      message: `block_count ${blockCount}, but the slot masks store ${storedBlocks} blocks; expected them equal`,
    });
  }
  return { checksumValid: true, usable: headerProblems === 0 && blockCountValid, blockCount, slots, problems };
}

/** MD5 of the 512 header bytes with the md5 field taken as zero; the data is not covered. */
function extentMd5(bytes: Buffer): Buffer {
  return createHash("md5")
    .update(bytes.subarray(0, EXTENT_OFFSET.md5))
    .update(ZERO_MD5)
    .update(bytes.subarray(EXTENT_OFFSET.md5 + MD5_SIZE, EXTENT_HEADER_SIZE))
    .digest();
}
