// What `serve` prints when the server cannot start: one plain line on
// stderr saying what to fix, next to the JSON log line with the stack. An
// operator reading a failed unit's status needs "make the state dir
// writable", not an SQLite stack trace.
import { StoreVersionError } from "../store/job-store.js";
import { StateDirLockedError } from "../store/state-dir-lock.js";
import { sqliteCodeOf } from "../store/store-errors.js";

/** The directories serve was given, to name the one at fault. */
export interface StartupDirs {
  readonly backupDir: string;
  readonly sourceRoots: readonly string[];
  readonly stateDir: string;
}

/** SQLite result codes of a database file that is not one, or is damaged. */
const CORRUPT_CODES = /^SQLITE_(NOTADB|CORRUPT)/;

function uid(): string {
  const id = process.getuid?.();
  return id === undefined ? "this user" : `this user (uid ${id})`;
}

/** The flag of the directory `file` is or lies in, if any. */
function flagOf(file: string, dirs: StartupDirs): string | undefined {
  const within = (dir: string): boolean => file === dir || file.startsWith(`${dir}/`);
  if (within(dirs.stateDir)) return "--state-dir";
  if (within(dirs.backupDir)) return "--backup-dir";
  if (dirs.sourceRoots.some(within)) return "--source-root";
  return undefined;
}

/** One line (no "error: " prefix, no newline) telling the operator what to fix. */
export function startupProblem(error: unknown, dirs: StartupDirs): string {
  // These two already say what to do.
  if (error instanceof StoreVersionError || error instanceof StateDirLockedError) return error.message;
  const { code, path: file } = (error ?? {}) as { code?: unknown; path?: unknown };
  const message = error instanceof Error ? error.message : String(error);
  // SQLite errors: only the job store and the state dir lock use SQLite.
  const sqliteCode = sqliteCodeOf(error);
  if (sqliteCode !== undefined) {
    if (CORRUPT_CODES.test(sqliteCode)) {
      return (
        `the job database in the state dir ${dirs.stateDir} is not a valid SQLite database (${sqliteCode}: ` +
        `${message}); ` +
        `move that dir's files away (the job history is lost) or give another --state-dir`
      );
    }
    return (
      `the state dir ${dirs.stateDir} cannot be used (${sqliteCode}: ${message}); ` +
      `make it writable by ${uid()} or give another --state-dir`
    );
  }
  if (typeof code === "string" && typeof file === "string") {
    const flag = flagOf(file, dirs);
    return (
      `cannot create or use ${file} (${code}); ` +
      (flag === undefined ? "check its permissions" : `make it writable by ${uid()} or give another ${flag}`)
    );
  }
  return `cannot start the server: ${message.split("\n")[0]}`;
}
