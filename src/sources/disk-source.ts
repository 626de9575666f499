// The contract every place a disk is read from fulfils: a raw file or block
// device, a disk image served by a private qemu-storage-daemon, an NBD
// export of another program, or a point-in-time view of a running QEMU's
// drive. The engine reads through this interface only; a new kind of source
// touches src/sources and one line of wiring, nothing in the engine.

/** What a source knows about a range without reading it. */
export interface SourceExtent {
  /** Device offset of the first byte. */
  readonly offset: number;
  readonly length: number;
  /**
   * True when every byte reads as zero (a hole or a zero extent): the
   * engine does not read it and records it as zero clusters.
   */
  readonly zero: boolean;
}

/** Kinds of sources, as the API names them. */
export type SourceKind = "file" | "block-device" | "image" | "nbd" | "qemu";

/** An opened source, ready to be read. */
export interface DiskSource {
  readonly kind: SourceKind;
  /** Guest-visible size in bytes. */
  readonly size: number;
  /**
   * What two jobs must not read at once (equal keys collide): st_dev:st_ino
   * of a file, the device number of a block device, the QMP socket and node
   * of a QEMU drive, the URI of an NBD export.
   */
  readonly lockKey: string;
  /** Where the data comes from, for status and error messages (a real path, a URI, socket:node). */
  readonly location: string;
  /**
   * Reads exactly `length` bytes at `position` into `buffer` from
   * `bufferOffset`. Rejects (with an Error naming the offset) on a read
   * error, a short read or a timeout; never hangs.
   */
  read(buffer: Uint8Array, bufferOffset: number, length: number, position: number): Promise<void>;
  /**
   * The allocation of [offset, offset + length), in order and without gaps,
   * starting at `offset`; it may end early (the caller asks again for the
   * rest). Absent when the source cannot tell: everything is read.
   */
  mapExtents?(offset: number, length: number): Promise<readonly SourceExtent[]>;
  /**
   * Live sources only: bytes the guest has written since the point in time
   * (what the scratch overlay holds), for status.
   */
  scratchBytes?(): Promise<number>;
  /**
   * Called once after the device's last read, before the archive is
   * committed: rejects when what was read cannot be trusted (a live
   * source's point in time was lost while it was read).
   */
  confirm?(): Promise<void>;
  /** Releases everything the source holds; never throws. Safe to call twice. */
  close(): Promise<void>;
}
