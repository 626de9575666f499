// Cuts byte ranges out of an extent's data, which arrives as views of the
// input chunks and may cross chunk borders. Returns views, never copies.

export class ExtentData {
  private readonly segments: readonly Buffer[];
  /** Segment the last lookup ended in, and that segment's start offset. */
  private segment = 0;
  private segmentStart = 0;

  constructor(segments: readonly Buffer[]) {
    this.segments = segments;
  }

  /**
   * Views covering bytes [offset, offset + length) of the data. Fastest when
   * offsets do not decrease between calls (slots come in data order).
   */
  views(offset: number, length: number): Buffer[] {
    if (offset < this.segmentStart) {
      this.segment = 0;
      this.segmentStart = 0;
    }
    while (this.segment < this.segments.length && offset >= this.segmentStart + this.segments[this.segment]!.length) {
      this.segmentStart += this.segments[this.segment]!.length;
      this.segment += 1;
    }
    const views: Buffer[] = [];
    let index = this.segment;
    let start = offset - this.segmentStart;
    let remaining = length;
    while (remaining > 0) {
      const segment = this.segments[index];
      if (segment === undefined) throw new RangeError(`extent data ends before byte ${offset + length}`);
      const end = Math.min(segment.length, start + remaining);
      views.push(segment.subarray(start, end));
      remaining -= end - start;
      start = 0;
      index += 1;
    }
    return views;
  }
}
