// Builds 512-byte VMA extent headers (docs/vma-format.md section 5).
import { hash } from "node:crypto";
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
  let blockCount = 0;
  slots.forEach((slot, index) => {
    checkSlot(slot, index);
    setBlockInfo(view, 0, index, slot);
    blockCount += popcount16(slot.mask);
  });
  sealHeader(header, view, 0, uuid, blockCount);
  return header;
}

/**
 * The headers of `extents` extents that store no block, back to back: each
 * holds `slotsPerExtent` consecutive clusters of device `devId` (mask 0),
 * the first from `firstCluster`. The same bytes as encodeExtentHeader of
 * those slots, without an object per cluster: the holes of a large sparse
 * disk are millions of clusters.
 */
export function encodeZeroExtentHeaders(
  uuid: Uint8Array,
  devId: number,
  firstCluster: number,
  extents: number,
  slotsPerExtent: number,
): Uint8Array {
  checkUuidBytes(uuid);
  if (!Number.isInteger(slotsPerExtent) || slotsPerExtent < 1 || slotsPerExtent > EXTENT_SLOTS) {
    throw new RangeError(`an extent holds 1..${EXTENT_SLOTS} slots, got ${slotsPerExtent}`);
  }
  if (!Number.isInteger(extents) || extents < 0) throw new RangeError(`extent count ${extents} is not a count`);
  const lastCluster = firstCluster + extents * slotsPerExtent - 1;
  checkSlot({ devId, clusterNum: firstCluster, mask: 0 }, 0);
  checkSlot({ devId, clusterNum: Math.max(firstCluster, lastCluster), mask: 0 }, slotsPerExtent - 1);
  const headers = new Uint8Array(extents * EXTENT_HEADER_SIZE);
  const view = new DataView(headers.buffer, headers.byteOffset, headers.byteLength);
  let clusterNum = firstCluster;
  for (let start = 0; start < headers.byteLength; start += EXTENT_HEADER_SIZE) {
    for (let index = 0; index < slotsPerExtent; index++) {
      setBlockInfo(view, start, index, { devId, clusterNum, mask: 0 });
      clusterNum += 1;
    }
    sealHeader(headers, view, start, uuid, 0);
  }
  return headers;
}

/** Blockinfo entry `index` of the header at `start`: [0..1] mask BE, [2] reserved, [3] dev_id, [4..7] cluster BE. */
function setBlockInfo(view: DataView, start: number, index: number, slot: ExtentSlot): void {
  const entry = start + EXTENT_OFFSET.blockInfo + BLOCK_INFO_SIZE * index;
  view.setUint16(entry, slot.mask);
  view.setUint8(entry + 3, slot.devId);
  view.setUint32(entry + 4, slot.clusterNum);
}

/** Fills in the magic, uuid and block count of the header at `start`, then its md5 over all of it. */
function sealHeader(bytes: Uint8Array, view: DataView, start: number, uuid: Uint8Array, blockCount: number): void {
  bytes.set(VMA_EXTENT_MAGIC, start + EXTENT_OFFSET.magic);
  bytes.set(uuid, start + EXTENT_OFFSET.uuid);
  view.setUint16(start + EXTENT_OFFSET.blockCount, blockCount);
  // The md5 field (bytes 24..39) is still zero here, as the checksum requires.
  const header = bytes.subarray(start, start + EXTENT_HEADER_SIZE);
  bytes.set(hash("md5", header, "buffer"), start + EXTENT_OFFSET.md5);
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
