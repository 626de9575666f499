// Spreads the writes of one status change over event-loop turns. A change
// goes to every watcher at once; written in one go, 10,000 writes hold the
// event loop for a hundred milliseconds or more, no other call is served
// meanwhile, and HTTP/2 sends nothing until the last write is queued (it
// flushes once the loop turns). Here at most `perTurn` writes happen per
// turn and the rest wait for the next one (setImmediate), so each turn's
// frames leave before the next begins: the first watchers have the change
// while the server still writes to the last, the other calls get their
// turns, and the write requests of one turn are freed before the next
// allocates more (less garbage survives into the old generation).
export class WriteTurns {
  private readonly perTurn: number;
  /** Writes granted in the current turn. */
  private granted = 0;
  /** Callers waiting for a later turn, first come first served. */
  private waiting: Array<() => void> = [];
  private turnScheduled = false;

  constructor(perTurn: number) {
    if (!Number.isInteger(perTurn) || perTurn < 1)
      throw new RangeError(`perTurn must be a positive integer, not ${perTurn}`);
    this.perTurn = perTurn;
  }

  /**
   * True when the caller may write now; else `resume` is called in the turn
   * where it may, and its write counts against that turn. `resume` must not
   * throw. A callback, not a promise: one status change asks for thousands
   * of turns at once.
   */
  take(resume: () => void): boolean {
    this.scheduleTurn();
    if (this.granted < this.perTurn && this.waiting.length === 0) {
      this.granted += 1;
      return true;
    }
    this.waiting.push(resume);
    return false;
  }

  /** Callers waiting for a later turn (for tests). */
  get queued(): number {
    return this.waiting.length;
  }

  private scheduleTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(() => this.nextTurn());
  }

  private nextTurn(): void {
    this.turnScheduled = false;
    const released = this.waiting.splice(0, this.perTurn);
    this.granted = released.length;
    // Writes granted in this turn count against it until the next one.
    if (this.granted > 0) this.scheduleTurn();
    for (const resume of released) resume();
  }
}
