// Removal of files the engine wrote earlier, known only from a stored job
// record: a partial archive after a crash, a finished archive on request.
// A record is data, not authority: a file is removed only when its real
// directory lies inside the backup dir, when it is a regular file (never a
// directory, never a symlink's target) and, for an archive, when it is still
// the very file the job committed (same device, inode and size).
import { lstatSync, realpathSync, unlinkSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { ArchiveIdentity } from "./job.js";
import { isInside } from "./path-policy.js";

export type Removal = "removed" | "absent";

/** Why a file was left in place. */
export class FileKeptError extends Error {
  readonly why: "outside-backup-dir" | "not-a-file" | "not-the-archive";

  constructor(why: FileKeptError["why"], message: string) {
    super(message);
    this.name = "FileKeptError";
    this.why = why;
  }
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
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
 * Removes a job's partial archive at startup (synchronously: recovery runs
 * before the engine serves anything). Throws FileKeptError, or the fs error.
 */
export function removePartialFileSync(backupDir: string, file: string): Removal {
  checkShape(file);
  let directory: string;
  try {
    directory = realpathSync(path.dirname(file));
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return "absent";
    throw error;
  }
  const target = confined(backupDir, directory, file);
  try {
    if (!lstatSync(target).isFile()) throw new FileKeptError("not-a-file", `${file} is not a regular file`);
    unlinkSync(target);
    return "removed";
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return "absent";
    throw error;
  }
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
