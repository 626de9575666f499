// WriteTurns: at most `perTurn` writers go in one event-loop turn, the
// rest wait for later turns in the order they came, and none is forgotten.
import { describe, expect, it } from "vitest";
import { WriteTurns } from "../src/server/write-turns.js";

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Asks for `count` turns at once, as one status change to `count` watchers does; records who wrote in which turn. */
function askAll(turns: WriteTurns, count: number, turnNow: () => number): Promise<number[]> {
  return Promise.all(
    Array.from(
      { length: count },
      (_, writer) =>
        new Promise<number>((resolve) => {
          const write = (): void => resolve(turnNow() * 1_000_000 + writer);
          if (turns.take(write)) write();
        }),
    ),
  );
}

/** A resume callback that counts its calls. */
function counter(): { resume: () => void; readonly calls: number } {
  let calls = 0;
  return {
    resume: () => {
      calls += 1;
    },
    get calls() {
      return calls;
    },
  };
}

describe("WriteTurns", () => {
  it("lets perTurn writers go in a turn and the rest in later turns, first come first served", async () => {
    const turns = new WriteTurns(64);
    let turn = 0;
    const counting = (async () => {
      for (; turn < 10; turn++) await nextTurn();
    })();
    const written = await askAll(turns, 200, () => turn);
    await counting;

    const turnOf = written.map((value) => Math.floor(value / 1_000_000));
    const perTurn = new Map<number, number>();
    for (const at of turnOf) perTurn.set(at, (perTurn.get(at) ?? 0) + 1);
    expect([...perTurn.values()]).toEqual([64, 64, 64, 8]);
    // Writer i never goes before writer i - 1.
    for (let writer = 1; writer < turnOf.length; writer++) {
      expect(turnOf[writer]).toBeGreaterThanOrEqual(turnOf[writer - 1] ?? 0);
    }
    expect(turns.queued).toBe(0);
  });

  it("grants at once while the turn has room, and counts the writers of a turn until the next", async () => {
    const turns = new WriteTurns(2);
    const never = counter();
    expect(turns.take(never.resume)).toBe(true);
    expect(turns.take(never.resume)).toBe(true);
    const third = counter();
    expect(turns.take(third.resume)).toBe(false);
    // A writer asking after the queue formed waits behind it, even in a later turn with room.
    const fourth = counter();
    expect(turns.take(fourth.resume)).toBe(false);
    expect(turns.queued).toBe(2);
    await nextTurn();
    expect([third.calls, fourth.calls]).toEqual([1, 1]);
    expect(turns.queued).toBe(0);
    // Released in this turn: they used it up.
    const fifth = counter();
    expect(turns.take(fifth.resume)).toBe(false);
    await nextTurn();
    await nextTurn();
    expect(fifth.calls).toBe(1);
    expect(turns.take(never.resume)).toBe(true);
    expect(never.calls).toBe(0);
  });

  it("refuses a turn size that is not a positive integer", () => {
    expect(() => new WriteTurns(0)).toThrow(RangeError);
    expect(() => new WriteTurns(1.5)).toThrow(RangeError);
  });
});
