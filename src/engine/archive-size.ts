// The size a device is recorded with in the archive. Proxmox's `vma`
// restores whole 512-byte sectors only: a size that is not a multiple of 512
// makes it abort, fail "write beyond end" or silently zero the last bytes.
// So, as Proxmox's own `vma create` does, such a source is recorded with its
// size rounded up to 512 and padded with zeros: the disk as QEMU presents
// such a file to a guest. Sizes that are multiples of 512 stay as they are.

export const SECTOR_SIZE = 512;

/** `sourceSize` rounded up to a whole number of 512-byte sectors. */
export function archiveDeviceSize(sourceSize: number): number {
  return Math.ceil(sourceSize / SECTOR_SIZE) * SECTOR_SIZE;
}
