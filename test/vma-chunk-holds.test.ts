// ChunkHolds (src/vma/chunk-holds.ts): a chunk the reader recycles goes back
// to the source only once every hold on its memory is released.
import { describe, expect, it } from "vitest";
import { ChunkHolds } from "../src/vma/chunk-holds.js";
import type { RecyclableChunks } from "../src/vma/file-chunk-source.js";

/** A recycling source of `chunks` that records what is handed back. */
function recordingSource(chunks: Buffer[]): RecyclableChunks & { recycled: Buffer[] } {
  const recycled: Buffer[] = [];
  return {
    recycled,
    recycle: (chunk) => void recycled.push(chunk),
    async *[Symbol.asyncIterator]() {
      yield* chunks;
    },
  };
}

describe("ChunkHolds", () => {
  it("passes the source's chunks through and recycles unheld chunks at once", async () => {
    const chunks = [Buffer.alloc(8, 1), Buffer.alloc(8, 2)];
    const source = recordingSource(chunks);
    const holds = new ChunkHolds(source);
    const seen: Buffer[] = [];
    for await (const chunk of holds) seen.push(chunk);
    expect(seen).toEqual(chunks);
    holds.recycle(chunks[0]!);
    expect(source.recycled).toEqual([chunks[0]]);
  });

  it("defers a held chunk until its last hold is released, and counts each memory once per hold", () => {
    const a = Buffer.alloc(16);
    const b = Buffer.alloc(16);
    const source = recordingSource([a, b]);
    const holds = new ChunkHolds(source);
    // Two views of a and one of b in one hold; another hold on a alone.
    const releaseFirst = holds.hold([a.subarray(0, 4), a.subarray(4, 8), b.subarray(0, 8)]);
    const releaseSecond = holds.hold([a.subarray(8)]);
    expect(holds.heldCount).toBe(2);
    holds.recycle(a);
    holds.recycle(b);
    expect(source.recycled).toEqual([]);
    releaseFirst();
    expect(source.recycled).toEqual([b]);
    releaseFirst(); // a second call changes nothing
    expect(source.recycled).toEqual([b]);
    releaseSecond();
    expect(source.recycled).toEqual([b, a]);
    expect(holds.heldCount).toBe(0);
  });

  it("releasing a hold on a chunk the reader still uses hands nothing back", () => {
    const a = Buffer.alloc(16);
    const source = recordingSource([a]);
    const holds = new ChunkHolds(source);
    holds.hold([a.subarray(0, 8)])();
    expect(source.recycled).toEqual([]);
    holds.recycle(a);
    expect(source.recycled).toEqual([a]);
  });

  it("over a source that does not recycle, recycling and holds do nothing", async () => {
    const chunks = [Buffer.alloc(4, 7)];
    const holds = new ChunkHolds(
      (async function* () {
        yield* chunks;
      })(),
    );
    holds.hold(chunks)();
    holds.recycle(chunks[0]!);
    const seen: Buffer[] = [];
    for await (const chunk of holds) seen.push(chunk);
    expect(seen).toEqual(chunks);
  });
});
