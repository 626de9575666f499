// Builds the VMA archive header (docs/vma-format.md sections 2-4) as one buffer.
import { createHash } from "node:crypto";
import { DEV_INFO_SIZE, HEADER_FIXED_SIZE, HEADER_OFFSET, VMA_MAGIC, VMA_VERSION } from "./constants.js";
import {
  BLOB_PREFIX_SIZE,
  blobBufferSizeForPlan,
  checkHeaderPlan,
  checkUuidBytes,
  headerSizeForBlobBuffer,
} from "./encode-limits.js";

export interface VmaHeaderConfig {
  readonly name: string;
  readonly data: Uint8Array;
}

export interface VmaHeaderDevice {
  readonly name: string;
  /** Bytes; the device gets dev_id = its index + 1. */
  readonly size: number;
}

export interface VmaHeaderInput {
  readonly uuid: Uint8Array;
  /** Unix seconds. */
  readonly ctime: number;
  readonly configs: readonly VmaHeaderConfig[];
  readonly devices: readonly VmaHeaderDevice[];
}

const DEV_INFO_SIZE_FIELD = 8;
const MD5_SIZE = 16;

/** Encodes a header exactly as Proxmox's writer does; throws VmaLimitError when it cannot fit. */
export function encodeHeader(input: VmaHeaderInput): Uint8Array {
  checkUuidBytes(input.uuid);
  if (!Number.isSafeInteger(input.ctime)) {
    throw new RangeError(`ctime must be an integer number of seconds, got ${input.ctime}`);
  }
  const plan = {
    configs: input.configs.map((config) => ({ name: config.name, size: config.data.byteLength })),
    devices: input.devices,
  };
  checkHeaderPlan(plan);
  const blobBufferSize = blobBufferSizeForPlan(plan);
  const headerSize = headerSizeForBlobBuffer(blobBufferSize);

  const header = new Uint8Array(headerSize);
  const view = new DataView(header.buffer);
  header.set(VMA_MAGIC, HEADER_OFFSET.magic);
  view.setUint32(HEADER_OFFSET.version, VMA_VERSION);
  header.set(input.uuid, HEADER_OFFSET.uuid);
  view.setBigInt64(HEADER_OFFSET.ctime, BigInt(input.ctime));
  view.setUint32(HEADER_OFFSET.blobBufferOffset, HEADER_FIXED_SIZE);
  view.setUint32(HEADER_OFFSET.blobBufferSize, blobBufferSize);
  view.setUint32(HEADER_OFFSET.headerSize, headerSize);

  const blobs = new BlobWriter(header, view);
  // Proxmox's blob order: each config's name then its data, then all device names.
  input.configs.forEach((config, index) => {
    view.setUint32(HEADER_OFFSET.configNames + 4 * index, blobs.addString(config.name));
    view.setUint32(HEADER_OFFSET.configData + 4 * index, blobs.addBytes(config.data));
  });
  input.devices.forEach((device, index) => {
    const entry = HEADER_OFFSET.devInfo + DEV_INFO_SIZE * (index + 1);
    view.setUint32(entry, blobs.addString(device.name));
    setUint64(view, entry + DEV_INFO_SIZE_FIELD, device.size);
  });

  // The md5 field is still zero here, as the checksum requires.
  const digest = createHash("md5").update(header).digest();
  header.set(digest.subarray(0, MD5_SIZE), HEADER_OFFSET.md5);
  return header;
}

/** Appends blobs to the blob buffer and returns their offsets relative to it. */
class BlobWriter {
  // Relative offset 0 is the reserved zero byte, so that pointer 0 means "none".
  private position = 1;

  constructor(
    private readonly header: Uint8Array,
    private readonly view: DataView,
  ) {}

  addString(text: string): number {
    const bytes = Buffer.from(`${text}\0`, "utf8");
    return this.addBytes(bytes);
  }

  addBytes(bytes: Uint8Array): number {
    const offset = this.position;
    const absolute = HEADER_FIXED_SIZE + offset;
    // The one little-endian field of the format.
    this.view.setUint16(absolute, bytes.byteLength, true);
    this.header.set(bytes, absolute + BLOB_PREFIX_SIZE);
    this.position += BLOB_PREFIX_SIZE + bytes.byteLength;
    return offset;
  }
}

/** Writes a safe integer as u64 BE without going through BigInt. */
function setUint64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, Math.floor(value / 2 ** 32));
  view.setUint32(offset + 4, value >>> 0);
}
