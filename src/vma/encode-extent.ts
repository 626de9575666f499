// Builds a 512-byte VMA extent header (docs/vma-format.md section 5).
import { createHash } from "node:crypto";
import {
  EXTENT_HEADER_SIZE,
  EXTENT_OFFSET,
  EXTENT_SLOTS,
  MAX_CLUSTERS_PER_DEVICE,
  MAX_DEVICES,
  VMA_EXTENT_MAGIC,
} from "./constants.js";
import { popcount16 } from "./block-mask.js";
import { checkUuidBytes } from "./encode-limits.js";

/** One used blockinfo slot. */
export interface ExtentSlot {
  readonly devId: number;
  readonly clusterNum: number;
  /** Bit j set = 4 KiB block j of the cluster is stored after the header. */
  readonly mask: number;
}

const BLOCK_INFO_SIZE = 8;
const MASK_LIMIT = 0xffff;

/** Encodes an extent header; unused slots stay zero, block_count is the sum of popcounts. */
export function encodeExtentHeader(uuid: Uint8Array, slots: readonly ExtentSlot[]): Uint8Array {
  checkUuidBytes(uuid);
  if (slots.length > EXTENT_SLOTS) {
    throw new RangeError(`an extent holds at most ${EXTENT_SLOTS} slots, got ${slots.length}`);
  }
  const header = new Uint8Array(EXTENT_HEADER_SIZE);
  const view = new DataView(header.buffer);
  header.set(VMA_EXTENT_MAGIC, EXTENT_OFFSET.magic);
  header.set(uuid, EXTENT_OFFSET.uuid);

  let blockCount = 0;
  slots.forEach((slot, index) => {
    checkSlot(slot, index);
    // Bytes: [0..1] mask BE, [2] reserved, [3] dev_id, [4..7] cluster BE.
    const entry = EXTENT_OFFSET.blockInfo + BLOCK_INFO_SIZE * index;
    view.setUint16(entry, slot.mask);
    view.setUint8(entry + 3, slot.devId);
    view.setUint32(entry + 4, slot.clusterNum);
    blockCount += popcount16(slot.mask);
  });
  view.setUint16(EXTENT_OFFSET.blockCount, blockCount);

  // The md5 field (bytes 24..39) is still zero here, as the checksum requires.
  header.set(createHash("md5").update(header).digest(), EXTENT_OFFSET.md5);
  return header;
}

function checkSlot(slot: ExtentSlot, index: number): void {
  if (!Number.isInteger(slot.devId) || slot.devId < 1 || slot.devId > MAX_DEVICES) {
    throw new RangeError(`extent slot ${index}: dev_id ${slot.devId} is outside 1..${MAX_DEVICES}`);
  }
  if (!Number.isInteger(slot.clusterNum) || slot.clusterNum < 0 || slot.clusterNum >= MAX_CLUSTERS_PER_DEVICE) {
    throw new RangeError(`extent slot ${index}: cluster ${slot.clusterNum} does not fit 32 bits`);
  }
  if (!Number.isInteger(slot.mask) || slot.mask < 0 || slot.mask > MASK_LIMIT) {
    throw new RangeError(`extent slot ${index}: mask ${slot.mask} does not fit 16 bits`);
  }
}
