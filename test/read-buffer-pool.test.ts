// The release point of read buffers: the writer releases clusters only when
// the sink call of their extent settled, and the pool hands a lent buffer
// out again only after its release.
import { describe, expect, it } from "vitest";
import { ReadBufferPool } from "../src/engine/read-buffer-pool.js";
import { CLUSTER_SIZE, WRITER_SLOTS_PER_EXTENT } from "../src/vma/constants.js";
import { VmaWriter, type VmaSink } from "../src/vma/writer.js";

const UUID = new Uint8Array(16).fill(7);

/** A sink whose writes complete only when the test says so. */
function heldSink(): { sink: VmaSink; completeNext: () => void; started: () => number } {
  const pending: Array<() => void> = [];
  let started = 0;
  return {
    sink: {
      write: () =>
        new Promise<void>((resolve) => {
          started += 1;
          pending.push(resolve);
        }),
    },
    completeNext: () => pending.shift()?.(),
    started: () => started,
  };
}

async function ticks(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe("VmaWriter.whenReleased", () => {
  it("resolves only once the extent holding the clusters was written", async () => {
    const held = heldSink();
    const writer = new VmaWriter(held.sink, { uuid: UUID, ctime: 0 });
    writer.addDevice("d", WRITER_SLOTS_PER_EXTENT * 2 * CLUSTER_SIZE);
    const cluster = new Uint8Array(CLUSTER_SIZE).fill(1);
    for (let n = 0; n < WRITER_SLOTS_PER_EXTENT; n++) await writer.writeCluster(1, n, cluster, 0xffff);
    let released = false;
    void writer.whenReleased().then(() => {
      released = true;
    });
    await ticks();
    expect(held.started()).toBe(1);
    expect(released).toBe(false);
    held.completeNext();
    await ticks();
    expect(released).toBe(true);

    // A cluster in the extent still being filled is released by abort().
    await writer.writeCluster(1, WRITER_SLOTS_PER_EXTENT, cluster, 0xffff);
    let tail = false;
    void writer.whenReleased().then(() => {
      tail = true;
    });
    await ticks();
    expect(tail).toBe(false);
    await writer.abort();
    await ticks();
    expect(tail).toBe(true);
  });
});

describe("ReadBufferPool", () => {
  it("reuses the oldest buffer only after its release, once all buffers exist", async () => {
    const pool = new ReadBufferPool(CLUSTER_SIZE, 3);
    const buffers = [await pool.acquire(), await pool.acquire(), await pool.acquire()];
    expect(new Set(buffers).size).toBe(3);
    let release!: () => void;
    pool.recycle(buffers[0]!, new Promise<void>((resolve) => (release = resolve)));
    pool.recycle(buffers[1]!, Promise.resolve());
    let got: Buffer | undefined;
    void pool.acquire().then((buffer) => {
      got = buffer;
    });
    await ticks();
    expect(got).toBeUndefined();
    release();
    await ticks();
    expect(got).toBe(buffers[0]);
    // Foreign buffers are not taken in.
    pool.recycle(Buffer.alloc(CLUSTER_SIZE), Promise.resolve());
    expect(await pool.acquire()).toBe(buffers[1]);
  });

  it("hands a finished job's buffers to the next pool, each only after its release", async () => {
    // An odd size, so that no other test's spares are involved.
    const size = CLUSTER_SIZE + 512;
    const first = new ReadBufferPool(size, 3);
    const [held, free] = [await first.acquire(), await first.acquire()];
    let release!: () => void;
    first.recycle(held!, new Promise<void>((resolve) => (release = resolve)));
    first.giveBack(free!);
    let disposed = false;
    void first.dispose().then(() => (disposed = true));
    await ticks();
    // The held buffer may still be written from: nothing is handed on yet.
    expect(disposed).toBe(false);
    const early = new ReadBufferPool(size, 3);
    const fresh = await early.acquire();
    expect([held, free]).not.toContain(fresh);
    release();
    await ticks();
    expect(disposed).toBe(true);
    const next = new ReadBufferPool(size, 3);
    const reused = new Set([await next.acquire(), await next.acquire()]);
    expect(reused).toEqual(new Set([held, free]));
    // Spares are used up: the third is new.
    expect([held, free]).not.toContain(await next.acquire());
  });
});
