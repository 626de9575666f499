// Sizes and limits of the Proxmox VMA format (see docs/vma-format.md).

/** "VMA\0": the archive header magic. */
export const VMA_MAGIC = Uint8Array.of(0x56, 0x4d, 0x41, 0x00);
/** "VMAE": the extent header magic. */
export const VMA_EXTENT_MAGIC = Uint8Array.of(0x56, 0x4d, 0x41, 0x45);
export const VMA_VERSION = 1;

/** A block: the unit of zero detection and of storage inside a cluster. */
export const BLOCK_SIZE = 4096;
/** A cluster: the unit a device is read and addressed in. */
export const CLUSTER_SIZE = 65536;
export const BLOCKS_PER_CLUSTER = CLUSTER_SIZE / BLOCK_SIZE;

/** The fixed part of the header; the blob buffer follows it. */
export const HEADER_FIXED_SIZE = 12288;
export const HEADER_ALIGN = 512;
/** Proxmox builds the header in an 8 x 64 KiB buffer. */
export const MAX_HEADER_SIZE = 8 * 65536;
/** Blob buffer bytes available once the header is padded to 512. */
export const MAX_BLOB_BUFFER_SIZE = MAX_HEADER_SIZE - HEADER_FIXED_SIZE;
/** A blob's 2-byte little-endian length caps its payload. */
export const MAX_BLOB_SIZE = 65535;

export const EXTENT_HEADER_SIZE = 512;
/** Slots the reader accepts in one extent. */
export const EXTENT_SLOTS = 59;
/** Proxmox's writer flushes an extent once this many slots are used. */
export const WRITER_SLOTS_PER_EXTENT = 58;
export const MAX_BLOCKS_PER_EXTENT = EXTENT_SLOTS * BLOCKS_PER_CLUSTER;

/** dev_ids 1..254; 0 means an unused slot and 255 is never used. */
export const MAX_DEVICES = 254;
export const MAX_CONFIGS = 256;
/** Cluster numbers are 32 bits wide. */
export const MAX_CLUSTERS_PER_DEVICE = 2 ** 32;
export const VMSTATE_DEVICE_NAME = "vmstate";

// Byte offsets of header fields.
export const HEADER_OFFSET = {
  magic: 0,
  version: 4,
  uuid: 8,
  ctime: 24,
  md5: 32,
  blobBufferOffset: 48,
  blobBufferSize: 52,
  headerSize: 56,
  configNames: 2044,
  configData: 3068,
  devInfo: 4096,
} as const;
export const DEV_INFO_SIZE = 32;

// Byte offsets of extent header fields.
export const EXTENT_OFFSET = {
  magic: 0,
  reserved: 4,
  blockCount: 6,
  uuid: 8,
  md5: 24,
  blockInfo: 40,
} as const;
