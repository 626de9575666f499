// What in a valid header Proxmox's own `vma` handles badly (docs/vma-format.md
// §2.2 and §13): the archive is fine by the format, so these are
// warnings, not problems. Our writer avoids the first (the engine rounds
// sizes up to 512); the second depends only on how small the disks are.
import { CLUSTER_SIZE } from "./constants.js";
import type { VmaHeader } from "./reader-types.js";

const SECTOR_SIZE = 512;

export function headerWarnings(header: VmaHeader): string[] {
  const warnings: string[] = [];
  const disks = [...header.devices.values()].filter((device) => !device.isVmstate);
  for (const device of disks) {
    // Below 512 bytes vma aborts; otherwise it fails "write beyond end" or
    // zeroes the last bytes of the restored disk.
    if (device.size % SECTOR_SIZE !== 0) {
      warnings.push(
        `${device.name}: size ${device.size} is not a multiple of ${SECTOR_SIZE}; Proxmox's vma cannot restore such ` +
          `a device exactly`,
      );
    }
  }
  // Its -v progress output divides by the total size in 64 KiB units, 0 here.
  if (disks.length > 0 && disks.every((device) => device.size < CLUSTER_SIZE)) {
    warnings.push(
      "every device is smaller than 64 KiB; Proxmox's vma verify -v and vma extract -v crash on such an archive " +
        "(division by zero), run them without -v",
    );
  }
  return warnings;
}
