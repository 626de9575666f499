// What the streaming VMA reader reports: the decoded header, each extent with
// its accepted slots and stored data, the problems it found, and a summary.

/** Something in the archive that is not as docs/vma-format.md requires. */
export interface VmaProblem {
  /** Byte offset in the (decompressed) archive. */
  readonly offset: number;
  /** What was expected there, and what was found. */
  readonly message: string;
}

export interface VmaConfig {
  /** Index in config_names / config_data (0..255). */
  readonly slot: number;
  readonly name: string;
  /** The raw config bytes (a view into the header). */
  readonly data: Buffer;
}

export interface VmaDevice {
  /** 1..254 (255 is reported as a problem but still read). */
  readonly devId: number;
  readonly name: string;
  /** Bytes. */
  readonly size: number;
  /** ceil(size / 64 KiB). */
  readonly clusterCount: number;
  /** The "vmstate" stream: clusters in order, no size or completeness check. */
  readonly isVmstate: boolean;
}

export interface VmaHeader {
  readonly version: number;
  /** Canonical lower-case form, e.g. "04fc12eb-0fed-4322-9aaa-f4e412f68096". */
  readonly uuid: string;
  /** The 16 raw bytes every extent repeats. */
  readonly uuidBytes: Buffer;
  /** Unix seconds (signed). */
  readonly ctime: number;
  readonly headerSize: number;
  readonly blobBufferOffset: number;
  readonly blobBufferSize: number;
  /** In slot order. */
  readonly configs: readonly VmaConfig[];
  /** Keyed by dev_id, in increasing dev_id order. */
  readonly devices: ReadonlyMap<number, VmaDevice>;
}

/** A blockinfo slot the reader accepted: its cluster is placed in a known device. */
export interface VmaSlot {
  /** Slot index 0..58 in the extent header. */
  readonly index: number;
  readonly devId: number;
  readonly cluster: number;
  /** Bit j set = 4 KiB block j is stored; cleared = all zeros. */
  readonly mask: number;
  /** Offset of the slot's first stored block within the extent's data. */
  readonly dataOffset: number;
}

export interface VmaExtent {
  /** Offset of the extent header in the archive. */
  readonly offset: number;
  readonly blockCount: number;
  /** Accepted slots only, in slot order; rejected ones were reported as problems. */
  readonly slots: readonly VmaSlot[];
  /**
   * The block_count x 4 KiB of data after the header, as views into the input
   * chunks (no copy); use ExtentData to cut out a slot's blocks. Valid only
   * until the reader is asked for its next event (the input's memory is reused).
   */
  readonly data: readonly Buffer[];
}

/** An inclusive range of cluster numbers. */
export interface ClusterRange {
  readonly first: number;
  readonly last: number;
}

/** The clusters of one device that no extent delivered. */
export interface VmaMissingClusters {
  readonly devId: number;
  readonly name: string;
  readonly clusterCount: number;
  /** How many clusters are missing. */
  readonly count: number;
  /** The first ranges (at most MISSING_RANGES_LISTED), for messages. */
  readonly ranges: readonly ClusterRange[];
  /** Every missing range, computed anew on each call. */
  allRanges(): Iterable<ClusterRange>;
}

export interface VmaSummary {
  /** Bytes of (decompressed) archive read, up to its end unless reading stopped early. */
  readonly archiveBytes: number;
  /** Extent headers that passed their checksum. */
  readonly extents: number;
  /** Clusters accepted (placed in a device). */
  readonly clusters: number;
  /** 4 KiB blocks stored in accepted slots. */
  readonly storedBlocks: number;
  /** Problems reported before the end. */
  readonly problemCount: number;
  /** Devices with missing clusters (vmstate excluded); empty when complete. */
  readonly missing: readonly VmaMissingClusters[];
}

export type VmaEvent =
  | { readonly type: "header"; readonly header: VmaHeader }
  | { readonly type: "extent"; readonly extent: VmaExtent }
  | { readonly type: "problem"; readonly problem: VmaProblem }
  | { readonly type: "end"; readonly summary: VmaSummary };
