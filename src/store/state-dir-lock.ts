// Makes sure one server at a time owns a state dir. Two servers on one state
// dir would each take the other's running jobs for interrupted ones. The lock
// is SQLite's own file lock on a small lock database, held in exclusive
// locking mode for as long as the connection is open: the operating system
// releases it when the process dies, even by kill -9, so it never goes stale.
import { DatabaseSync } from "node:sqlite";

/** SQLite's primary result code for "database is locked". */
const SQLITE_BUSY = 5;

export class StateDirLockedError extends Error {
  constructor(lockPath: string) {
    super(
      `another vmabackup server is using this state dir (${lockPath} is locked); ` +
        `stop it or give this one another --state-dir`,
    );
    this.name = "StateDirLockedError";
  }
}

export class StateDirLock {
  readonly #db: DatabaseSync;

  private constructor(db: DatabaseSync) {
    this.#db = db;
  }

  /** Takes the lock at `lockPath` (created if missing); throws StateDirLockedError when it is held. */
  static acquire(lockPath: string): StateDirLock {
    const db = new DatabaseSync(lockPath, { timeout: 0 });
    try {
      db.exec("PRAGMA locking_mode = EXCLUSIVE");
      // The first write takes the exclusive lock; exclusive mode keeps it.
      db.exec("BEGIN IMMEDIATE; COMMIT");
      return new StateDirLock(db);
    } catch (error) {
      db.close();
      // node:sqlite errors carry SQLite's result code in `errcode` (extended
      // codes keep the primary one in the low byte).
      if (((error as { errcode?: number }).errcode ?? 0) % 256 === SQLITE_BUSY) throw new StateDirLockedError(lockPath);
      throw error;
    }
  }

  release(): void {
    this.#db.close();
  }
}
