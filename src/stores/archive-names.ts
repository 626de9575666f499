// What an archive's name says: its compression (`.vma`, `.vma.zst`,
// `.vma.gz`, as Proxmox names them), and vzdump's naming for archives meant
// for a Proxmox storage's dump/ directory.
import { COMPRESSION_SUFFIX, type Compression } from "./compressed-upload.js";

const VMA_SUFFIX = ".vma";
/** Proxmox's VMIDs: 100 to 999999999. */
const MIN_VMID = 100;
const MAX_VMID = 999_999_999;

/** The name every archive of `compression` ends with. */
export function archiveSuffix(compression: Compression): string {
  return VMA_SUFFIX + COMPRESSION_SUFFIX[compression];
}

/** The compression a name says, or undefined when it ends in none of the archive suffixes. */
export function compressionOfName(name: string): Compression | undefined {
  const all: Compression[] = ["zstd", "gzip", "none"];
  return all.find((compression) => name.endsWith(archiveSuffix(compression)));
}

export class VmidError extends RangeError {
  constructor(vmid: number) {
    super(`vmid ${vmid} is not a Proxmox VMID (a whole number from ${MIN_VMID} to ${MAX_VMID})`);
    this.name = "VmidError";
  }
}

/**
 * vzdump's name: `vzdump-qemu-<vmid>-<YYYY_MM_DD-HH_MM_SS><suffix>`, the
 * time in local time as vzdump writes it. VmidError for an impossible vmid.
 */
export function vzdumpArchiveName(vmid: number, at: Date, compression: Compression): string {
  if (!Number.isInteger(vmid) || vmid < MIN_VMID || vmid > MAX_VMID) throw new VmidError(vmid);
  const two = (value: number): string => String(value).padStart(2, "0");
  const date = `${at.getFullYear()}_${two(at.getMonth() + 1)}_${two(at.getDate())}`;
  const time = `${two(at.getHours())}_${two(at.getMinutes())}_${two(at.getSeconds())}`;
  return `vzdump-qemu-${vmid}-${date}-${time}${archiveSuffix(compression)}`;
}
