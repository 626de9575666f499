// Removing the archive of a done job when its record is deleted: only the
// file the job committed (same identity), only inside the backup dir; a
// missing file is fine, anything else is refused with the record kept.
import { EngineError } from "./errors.js";
import { describeError } from "./job-failure.js";
import type { JobEntry } from "./job-record.js";
import { FileKeptError, removeArchive } from "./owned-files.js";
import { REASON } from "./reasons.js";

/** Removes a done job's archive for delete(); returns whether a file was removed. */
export async function removeArchiveOf(backupDir: string, entry: JobEntry): Promise<boolean> {
  const { status, extras } = entry;
  // Only a job that ended done committed an archive; any file at the path
  // of another job belongs to someone else.
  if (status.state !== "done") return false;
  const field = "delete_archive";
  const kept = (message: string): EngineError =>
    new EngineError("failed-precondition", REASON.ARCHIVE_REPLACED, `${field}: ${message}; nothing was deleted`, field);
  if (extras.archive === undefined) throw kept(`the identity of ${status.backupFile} was not recorded`);
  try {
    return (await removeArchive(backupDir, status.backupFile, extras.archive)) === "removed";
  } catch (error) {
    if (error instanceof FileKeptError) {
      if (error.why === "outside-backup-dir") {
        throw new EngineError(
          "permission-denied",
          REASON.PATH_NOT_ALLOWED,
          `${field}: ${error.message}; nothing was deleted`,
          field,
        );
      }
      throw kept(error.message);
    }
    throw new EngineError(
      "failed-precondition",
      REASON.ARCHIVE_REMOVE_FAILED,
      `${field}: cannot remove ${status.backupFile}: ${describeError(error)}; the record was kept`,
      field,
    );
  }
}
