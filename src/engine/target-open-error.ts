// Maps a store's failure to create an archive to the refusal the client
// gets: the request can still be refused cleanly at that point, since the
// job has not started.
import { ArchiveOutsideError } from "../stores/local/local-errors.js";
import { errnoOf } from "./errno.js";
import { EngineError } from "./errors.js";
import { describeError } from "./job-failure.js";
import { REASON } from "./reasons.js";

const FIELD = "backup_file";

export function targetOpenError(error: unknown, backupFile: string): EngineError {
  if (error instanceof ArchiveOutsideError) {
    return new EngineError(
      "permission-denied",
      REASON.PATH_NOT_ALLOWED,
      `${FIELD}: ${backupFile} is outside the backup directory (${error.message})`,
      FIELD,
    );
  }
  const code = errnoOf(error);
  switch (code) {
    case "EEXIST":
      return new EngineError(
        "already-exists",
        REASON.BACKUP_FILE_EXISTS,
        `${FIELD}: ${backupFile} or its temporary file already exists`,
        FIELD,
      );
    case "ENOENT":
    case "ENOTDIR":
      return new EngineError(
        "failed-precondition",
        REASON.BACKUP_DIR_NOT_FOUND,
        `${FIELD}: the directory of ${backupFile} does not exist`,
        FIELD,
      );
    case "EACCES":
    case "EPERM":
    case "EROFS":
      return new EngineError(
        "failed-precondition",
        REASON.BACKUP_DIR_NOT_WRITABLE,
        `${FIELD}: cannot create ${backupFile} (${code})`,
        FIELD,
      );
    default:
      return new EngineError(
        "failed-precondition",
        REASON.BACKUP_FILE_CREATE_FAILED,
        `${FIELD}: cannot create ${backupFile}: ${describeError(error)}`,
        FIELD,
      );
  }
}
