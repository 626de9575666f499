// Which failures of the job store are the store's environment (a full or
// failing disk, a locked or damaged file) rather than a bug: callers answer
// those as "try later" instead of as internal errors.
import Database from "better-sqlite3";

/** full: no space (SQLITE_FULL, ENOSPC, EDQUOT); unavailable: the file cannot be used now. */
export type StoreFailure = "full" | "unavailable";

const FULL_CODES: ReadonlySet<string> = new Set(["SQLITE_FULL", "ENOSPC", "EDQUOT"]);

/** SQLite result codes (primary, so extended codes such as SQLITE_IOERR_WRITE count too) of an unusable file. */
const UNAVAILABLE_PRIMARY_CODES: readonly string[] = [
  "SQLITE_IOERR",
  "SQLITE_BUSY",
  "SQLITE_LOCKED",
  "SQLITE_READONLY",
  "SQLITE_CANTOPEN",
  "SQLITE_CORRUPT",
  "SQLITE_NOTADB",
  "SQLITE_PROTOCOL",
];

const UNAVAILABLE_ERRNO_CODES: ReadonlySet<string> = new Set(["EIO", "EROFS", "EACCES", "EPERM"]);

/** The store failure `error` is, or undefined when it is something else (a bug). */
export function storeFailureOf(error: unknown): StoreFailure | undefined {
  const code = (error as { code?: unknown } | null | undefined)?.code;
  if (typeof code !== "string") return undefined;
  if (FULL_CODES.has(code)) return "full";
  if (error instanceof Database.SqliteError) {
    return UNAVAILABLE_PRIMARY_CODES.some((primary) => code === primary || code.startsWith(`${primary}_`))
      ? "unavailable"
      : undefined;
  }
  return UNAVAILABLE_ERRNO_CODES.has(code) ? "unavailable" : undefined;
}

/** The code the store reported, e.g. "SQLITE_FULL", for messages; "" when there is none. */
export function storeErrorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null | undefined)?.code;
  return typeof code === "string" ? code : "";
}
