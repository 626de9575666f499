// The server-wide revision sequence. Revisions are handed out from memory
// and reserved in the store a block at a time, so the sequence survives a
// restart of any kind without a database write per revision: after a crash
// it resumes above the reserved mark (skipping what was left of the block),
// never below a revision some watcher may already have seen.
import type { JobStore } from "../store/job-store.js";

/** Revisions reserved per store write. */
export const REVISION_BLOCK = 1000;

export class RevisionCounter {
  private readonly store: JobStore;
  private readonly onReserveError: (error: unknown) => void;
  private last: number;
  private reserved: number;

  /** Starts above every revision the store has handed out. */
  constructor(store: JobStore, onReserveError: (error: unknown) => void) {
    this.store = store;
    this.onReserveError = onReserveError;
    this.last = store.revisionHighWater();
    this.reserved = this.last;
  }

  /** The last revision handed out (0 before the first). */
  get current(): number {
    return this.last;
  }

  next(): number {
    const revision = this.last + 1;
    if (revision > this.reserved) {
      this.reserved = revision + REVISION_BLOCK - 1;
      try {
        this.store.reserveRevisions(this.reserved);
      } catch (error) {
        // Handing out revisions must go on (a job's status depends on it);
        // the next call tries to write the mark again.
        this.reserved = revision;
        this.onReserveError(error);
      }
    }
    this.last = revision;
    return revision;
  }
}
