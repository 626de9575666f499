// Removal of files the engine wrote earlier, known only from a stored job
// record: a partial archive after a crash, a finished archive on request.
// A record is data, not authority: a file is removed only when its real
// directory lies inside the backup dir, when it is a regular file (never a
// directory, never a symlink's target) and, for an archive, when it is still
// the very file the job committed (same device, inode and size). At
// startup, a partial file or a published archive counts as the job's only
// when it is the file the job created (same device and inode) and holds an
// archive with the job's uuid: inode numbers are reused, and another server
// may share the backup dir and write files of the same name.
import { closeSync, type BigIntStats, lstatSync, openSync, readSync, realpathSync, unlinkSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { parse as parseUuid } from "uuid";
import type { ArchiveIdentity, FileIdentity } from "./job.js";
import { isInside } from "./path-policy.js";
import { errnoOf } from "./errno.js";

/** Who a file must be, and which archive uuid it must hold, to count as a job's own. */
export interface FileOwner {
  readonly file: FileIdentity;
  readonly uuid: string;
}

/** "VMA\0", then the version, then the archive uuid at bytes 8..23 (docs/vma-format.md section 2). */
const VMA_MAGIC = Buffer.from("VMA\0", "latin1");
const UUID_OFFSET = 8;
const UUID_END = 24;

export type Removal = "removed" | "absent";

/** Why a file was left in place. */
export class FileKeptError extends Error {
  readonly why: "outside-backup-dir" | "not-a-file" | "not-the-archive" | "not-the-jobs-own";

  constructor(why: FileKeptError["why"], message: string) {
    super(message);
    this.name = "FileKeptError";
    this.why = why;
  }
}

function outside(file: string): FileKeptError {
  return new FileKeptError("outside-backup-dir", `${file} is outside the backup directory`);
}

/** Throws unless `file` is an absolute path naming an entry (not "." or ".."). */
function checkShape(file: string): void {
  const base = path.basename(file);
  if (!path.isAbsolute(file) || base === "" || base === "." || base === "..") throw outside(file);
}

/** `file` in its real directory, which must lie inside `backupDir`. */
function confined(backupDir: string, realDirectory: string, file: string): string {
  if (!isInside(backupDir, realDirectory)) throw outside(file);
  return path.join(realDirectory, path.basename(file));
}

/**
 * The identity of an archive just committed at `file` (for recordArchive).
 * Throws the fs error when it cannot be read.
 */
export async function archiveIdentity(file: string): Promise<ArchiveIdentity> {
  const stats = await fs.lstat(file, { bigint: true });
  return { dev: String(stats.dev), ino: String(stats.ino), size: Number(stats.size) };
}

/**
 * Removes a job's partial archive (synchronously: recovery runs before the
 * engine serves anything). With `owner`, only when the file is the owner's
 * own (ownsFileSync). Throws FileKeptError, or the fs error.
 */
export function removePartialFileSync(backupDir: string, file: string, owner?: FileOwner): Removal {
  const found = findFileSync(backupDir, file);
  if (found === undefined) return "absent";
  try {
    if (owner !== undefined && !ownsFileSync(found.target, found.stats, owner)) {
      throw new FileKeptError("not-the-jobs-own", `${file} is not the file job ${owner.uuid} created`);
    }
    unlinkSync(found.target);
    return "removed";
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return "absent";
    throw error;
  }
}

/**
 * The regular file at `file`, whose real directory must lie inside
 * `backupDir`; undefined when it does not exist. Throws FileKeptError, or
 * the fs error.
 */
export function findFileSync(backupDir: string, file: string): { target: string; stats: BigIntStats } | undefined {
  checkShape(file);
  let directory: string;
  try {
    directory = realpathSync(path.dirname(file));
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return undefined;
    throw error;
  }
  const target = confined(backupDir, directory, file);
  let stats: BigIntStats;
  try {
    stats = lstatSync(target, { bigint: true });
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return undefined;
    throw error;
  }
  if (!stats.isFile()) throw new FileKeptError("not-a-file", `${file} is not a regular file`);
  return { target, stats };
}

/**
 * True when `target` (lstat'ed as `stats`) is the file `owner` created (same
 * device, inode and, where the filesystem keeps one, birth time) and, once
 * it holds a header, an archive with the owner's uuid. A file too short for
 * a header counts only by its birth time: without one nothing tells it from
 * a newer file that reused the inode.
 */
export function ownsFileSync(target: string, stats: BigIntStats, owner: FileOwner): boolean {
  const { dev, ino, born } = owner.file;
  if (String(stats.dev) !== dev || String(stats.ino) !== ino) return false;
  const knowsBirth = born !== "0";
  if (knowsBirth && String(stats.birthtimeNs) !== born) return false;
  const start = Buffer.alloc(UUID_END);
  const fd = openSync(target, "r");
  let read: number;
  try {
    read = readSync(fd, start, 0, UUID_END, 0);
  } finally {
    closeSync(fd);
  }
  if (read < UUID_END) return knowsBirth;
  return (
    start.subarray(0, VMA_MAGIC.length).equals(VMA_MAGIC) &&
    start.subarray(UUID_OFFSET, UUID_END).equals(parseUuid(owner.uuid))
  );
}

/**
 * Removes a job's finished archive when it is still the file the job
 * committed. Throws FileKeptError, or the fs error.
 */
export async function removeArchive(backupDir: string, file: string, identity: ArchiveIdentity): Promise<Removal> {
  checkShape(file);
  let directory: string;
  try {
    directory = await fs.realpath(path.dirname(file));
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return "absent";
    throw error;
  }
  const target = confined(backupDir, directory, file);
  try {
    const stats = await fs.lstat(target, { bigint: true });
    if (!stats.isFile()) throw new FileKeptError("not-a-file", `${file} is not a regular file`);
    const same =
      String(stats.dev) === identity.dev && String(stats.ino) === identity.ino && Number(stats.size) === identity.size;
    if (!same) {
      throw new FileKeptError("not-the-archive", `${file} has been replaced since the job wrote it`);
    }
    await fs.unlink(target);
    return "removed";
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return "absent";
    throw error;
  }
}
