// Walks a source's allocation map forward, asking the source for more as
// the reader advances, so that the reader can tell which clusters read as
// zero without reading them. Offsets asked must not decrease: extents
// behind the reader are dropped.
import type { DiskSource, SourceExtent } from "../sources/disk-source.js";

export class ZeroExtents {
  private readonly source: DiskSource;
  private readonly size: number;
  /** Known extents from the first one not yet behind the reader; contiguous. */
  private extents: SourceExtent[] = [];
  /** End of the mapped range. */
  private mappedTo = 0;

  /** `source` must have mapExtents. */
  constructor(source: DiskSource, size: number) {
    this.source = source;
    this.size = size;
  }

  /**
   * Where the run of zero bytes starting at `offset` ends, at most `limit`;
   * `offset` itself when the byte there is data. Throws when the source's
   * map is malformed (not contiguous, empty), naming the offset.
   */
  async zeroEnd(offset: number, limit: number): Promise<number> {
    let position = offset;
    while (position < limit) {
      const extent = await this.extentAt(position);
      if (!extent.zero) return position;
      position = Math.min(extent.offset + extent.length, limit);
    }
    return limit;
  }

  private async extentAt(position: number): Promise<SourceExtent> {
    for (;;) {
      while (this.extents.length > 0 && endOf(this.extents[0] as SourceExtent) <= position) this.extents.shift();
      const first = this.extents[0];
      if (first !== undefined) return first;
      await this.mapMore(position);
    }
  }

  private async mapMore(position: number): Promise<void> {
    const from = Math.max(this.mappedTo, position);
    const mapExtents = this.source.mapExtents;
    if (mapExtents === undefined) throw new Error("the source has no allocation map");
    const extents = await mapExtents.call(this.source, from, this.size - from);
    if (extents.length === 0) throw new Error(`the source's allocation map is empty at offset ${from}`);
    let expected = from;
    for (const extent of extents) {
      if (extent.offset !== expected || !(extent.length > 0)) {
        throw new Error(
          `the source's allocation map is not contiguous at offset ${expected} (got ${extent.offset}+${extent.length})`,
        );
      }
      expected = endOf(extent);
    }
    this.extents.push(...extents);
    this.mappedTo = expected;
  }
}

function endOf(extent: SourceExtent): number {
  return extent.offset + extent.length;
}
