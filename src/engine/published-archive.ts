// A job that died between publishing its archive (the link to the final
// name) and storing DONE has finished its work: the archive is complete and
// durable (commit links only after the last fsync). Recovery recognises it
// by the file itself: the final name is the very file the job created as its
// partial file, holds an archive with the job's uuid, and our reader finds
// that archive valid and complete. Then the job ends DONE, with the identity
// that lets DeleteBackup(delete_archive) remove exactly that file.
import { scanArchiveFileSync } from "../vma/scan-archive-file.js";
import type { ArchiveIdentity } from "./job.js";
import { findFileSync, type FileOwner, ownsFileSync } from "./owned-files.js";
import type { DeviceStatus, JobStatus } from "./types.js";

export type PublishedArchive =
  | { readonly kind: "none" }
  /** The job's own file is at the final name, but it is not a valid, complete archive. */
  | { readonly kind: "invalid"; readonly problem: string }
  | {
      readonly kind: "complete";
      readonly identity: ArchiveIdentity;
      /** When the archive was last written (Unix ms): the job's end, near enough. */
      readonly writtenAt: number;
      /** The devices as the archive has them, every byte transferred. */
      readonly devices: readonly DeviceStatus[];
    };

/**
 * Looks for the job's own archive at `status.backupFile` (inside
 * `backupDir`). Throws FileKeptError or the fs error when it cannot look.
 */
export function findPublishedArchiveSync(backupDir: string, status: JobStatus, owner: FileOwner): PublishedArchive {
  const found = findFileSync(backupDir, status.backupFile);
  if (found === undefined || !ownsFileSync(found.target, found.stats, owner)) return { kind: "none" };
  const scan = scanArchiveFileSync(found.target);
  if (scan.problem !== undefined) return { kind: "invalid", problem: scan.problem };
  const devices = status.devices.map((device) => {
    const stored = scan.storedBytes.get(device.devId) ?? 0;
    return { ...device, transferredBytes: device.size, zeroBytes: Math.max(0, device.size - stored) };
  });
  return {
    kind: "complete",
    identity: { dev: String(found.stats.dev), ino: String(found.stats.ino), size: Number(found.stats.size) },
    writtenAt: Number(found.stats.mtimeMs),
    devices,
  };
}
