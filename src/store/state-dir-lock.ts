// Makes sure one server at a time owns a state dir. Two servers on one state
// dir would each take the other's running jobs for interrupted ones. The lock
// is SQLite's own file lock on a small lock database, held in exclusive
// locking mode for as long as the connection is open: the operating system
// releases it when the process dies, even by kill -9, so it never goes stale.
import Database from "better-sqlite3";

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
  readonly #db: Database.Database;

  private constructor(db: Database.Database) {
    this.#db = db;
  }

  /** Takes the lock at `lockPath` (created if missing); throws StateDirLockedError when it is held. */
  static acquire(lockPath: string): StateDirLock {
    const db = new Database(lockPath, { timeout: 0 });
    try {
      db.pragma("locking_mode = EXCLUSIVE");
      // The first write takes the exclusive lock; exclusive mode keeps it.
      db.exec("BEGIN IMMEDIATE; COMMIT");
      return new StateDirLock(db);
    } catch (error) {
      db.close();
      if ((error as { code?: string }).code === "SQLITE_BUSY") throw new StateDirLockedError(lockPath);
      throw error;
    }
  }

  release(): void {
    this.#db.close();
  }
}
