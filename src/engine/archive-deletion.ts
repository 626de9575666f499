// Removing the archive of a done job when its record is deleted: through
// the store it went to, only the object the job committed (the store checks
// its reference: same file or same object version, inside the store); a
// missing object is fine, anything else is refused with the record kept.
import { ArchiveKeptError, type ArchiveStore } from "../stores/archive-store.js";
import { DEFAULT_TARGET } from "../stores/store-targets.js";
import { EngineError } from "./errors.js";
import { describeError } from "./job-failure.js";
import type { JobEntry } from "./job-record.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";

const FIELD = "delete_archive";

/** Removes a done job's archive for delete(); returns whether an object was removed. */
export async function removeArchiveOf(stores: ReadonlyMap<string, ArchiveStore>, entry: JobEntry): Promise<boolean> {
  const { status, extras } = entry;
  // Only a job that ended done committed an archive; any file at the path
  // of another job belongs to someone else.
  if (status.state !== "done") return false;
  const kept = (message: string): EngineError =>
    new EngineError("failed-precondition", REASON.ARCHIVE_REPLACED, `${FIELD}: ${message}; nothing was deleted`, FIELD);
  if (extras.archive === undefined) throw kept(`the identity of ${status.backupFile} was not recorded`);
  const targetName = extras.target ?? DEFAULT_TARGET;
  const store = stores.get(targetName);
  if (store === undefined) {
    throw new EngineError(
      "failed-precondition",
      REASON.ARCHIVE_REMOVE_FAILED,
      `${FIELD}: the archive is in target ${quote(targetName)}, which this server does not have; the record was kept`,
      FIELD,
    );
  }
  try {
    return (await store.remove(extras.archive)) === "removed";
  } catch (error) {
    if (error instanceof ArchiveKeptError) {
      if (error.why === "outside-store") {
        throw new EngineError(
          "permission-denied",
          REASON.PATH_NOT_ALLOWED,
          `${FIELD}: ${error.message}; nothing was deleted`,
          FIELD,
        );
      }
      throw kept(error.message);
    }
    throw new EngineError(
      "failed-precondition",
      REASON.ARCHIVE_REMOVE_FAILED,
      `${FIELD}: cannot remove ${status.backupFile}: ${describeError(error)}; the record was kept`,
      FIELD,
    );
  }
}
