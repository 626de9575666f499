// One bit per cluster of a device, in pages allocated on first use, so that a
// header claiming a huge device costs nothing until its clusters arrive:
// memory follows the clusters seen, not the size claimed (64 KiB per 32 GiB).
import type { ClusterRange } from "./reader-types.js";

const PAGE_BITS = 1 << 19;
const PAGE_WORDS = PAGE_BITS / 32;

export class ClusterBitmap {
  readonly clusterCount: number;
  private readonly pages: Array<Uint32Array | undefined>;
  private setCount = 0;

  constructor(clusterCount: number) {
    this.clusterCount = clusterCount;
    this.pages = new Array<Uint32Array | undefined>(Math.ceil(clusterCount / PAGE_BITS));
  }

  /** Clusters marked so far. */
  get count(): number {
    return this.setCount;
  }

  /** Marks a cluster; returns false when it was already marked. */
  mark(cluster: number): boolean {
    const pageIndex = Math.floor(cluster / PAGE_BITS);
    const page = this.pages[pageIndex] ?? new Uint32Array(PAGE_WORDS);
    this.pages[pageIndex] = page;
    const bit = cluster % PAGE_BITS;
    const word = bit >>> 5;
    const flag = 1 << (bit & 31);
    if ((page[word]! & flag) !== 0) return false;
    page[word] = page[word]! | flag;
    this.setCount += 1;
    return true;
  }

  /** Inclusive ranges of unmarked clusters in increasing order. */
  *unmarkedRanges(): Generator<ClusterRange> {
    let runStart = -1;
    for (let pageIndex = 0; pageIndex < this.pages.length; pageIndex++) {
      const pageStart = pageIndex * PAGE_BITS;
      const pageEnd = Math.min(this.clusterCount, pageStart + PAGE_BITS);
      const page = this.pages[pageIndex];
      if (page === undefined) {
        if (runStart < 0) runStart = pageStart;
        continue;
      }
      for (let word = 0; pageStart + word * 32 < pageEnd; word++) {
        const bits = page[word]!;
        const wordStart = pageStart + word * 32;
        // Whole words decide most of the time; only mixed words are walked bit by bit.
        if (bits === 0) {
          if (runStart < 0) runStart = wordStart;
          continue;
        }
        if (bits === 0xffffffff) {
          if (runStart >= 0) {
            yield { first: runStart, last: wordStart - 1 };
            runStart = -1;
          }
          continue;
        }
        for (let bit = 0; bit < 32 && wordStart + bit < pageEnd; bit++) {
          const marked = (bits & (1 << bit)) !== 0;
          if (!marked && runStart < 0) runStart = wordStart + bit;
          if (marked && runStart >= 0) {
            yield { first: runStart, last: wordStart + bit - 1 };
            runStart = -1;
          }
        }
      }
    }
    if (runStart >= 0) yield { first: runStart, last: this.clusterCount - 1 };
  }
}
