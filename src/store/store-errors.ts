// Which failures of the job store are the store's environment (a full or
// failing disk, a locked or damaged file) rather than a bug: callers answer
// those as "try later" instead of as internal errors.
/**
 * SQLite's primary result codes by number (https://sqlite.org/rescode.html).
 * node:sqlite errors carry the (extended) number in `errcode`; its low byte
 * is the primary code.
 */
const SQLITE_PRIMARY_CODES: readonly string[] = [
  "SQLITE_OK",
  "SQLITE_ERROR",
  "SQLITE_INTERNAL",
  "SQLITE_PERM",
  "SQLITE_ABORT",
  "SQLITE_BUSY",
  "SQLITE_LOCKED",
  "SQLITE_NOMEM",
  "SQLITE_READONLY",
  "SQLITE_INTERRUPT",
  "SQLITE_IOERR",
  "SQLITE_CORRUPT",
  "SQLITE_NOTFOUND",
  "SQLITE_FULL",
  "SQLITE_CANTOPEN",
  "SQLITE_PROTOCOL",
  "SQLITE_EMPTY",
  "SQLITE_SCHEMA",
  "SQLITE_TOOBIG",
  "SQLITE_CONSTRAINT",
  "SQLITE_MISMATCH",
  "SQLITE_MISUSE",
  "SQLITE_NOLFS",
  "SQLITE_AUTH",
  "SQLITE_FORMAT",
  "SQLITE_RANGE",
  "SQLITE_NOTADB",
];

/** "SQLITE_FULL" etc. when `error` comes from SQLite (node:sqlite), else undefined. */
export function sqliteCodeOf(error: unknown): string | undefined {
  const { code, errcode } = (error ?? {}) as { code?: unknown; errcode?: unknown };
  if (code !== "ERR_SQLITE_ERROR" || typeof errcode !== "number") return undefined;
  return SQLITE_PRIMARY_CODES[errcode & 0xff] ?? `SQLITE_${errcode}`;
}

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
  const sqliteCode = sqliteCodeOf(error);
  const code = sqliteCode ?? (error as { code?: unknown } | null | undefined)?.code;
  if (typeof code !== "string") return undefined;
  if (FULL_CODES.has(code)) return "full";
  if (sqliteCode !== undefined) {
    return UNAVAILABLE_PRIMARY_CODES.some((primary) => code === primary || code.startsWith(`${primary}_`))
      ? "unavailable"
      : undefined;
  }
  return UNAVAILABLE_ERRNO_CODES.has(code) ? "unavailable" : undefined;
}

/** The code the store reported, e.g. "SQLITE_FULL", for messages; "" when there is none. */
export function storeErrorCode(error: unknown): string {
  const code = sqliteCodeOf(error) ?? (error as { code?: unknown } | null | undefined)?.code;
  return typeof code === "string" ? code : "";
}
