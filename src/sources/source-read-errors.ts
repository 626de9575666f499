// Errors a source's read() rejects with when it can say more than "failed":
// the engine turns them into a job's error message naming the device.

/** A read failed at `position` (the device offset of the failing request). */
export class SourceReadError extends Error {
  readonly position: number;

  constructor(position: number, cause: unknown) {
    super(`read error at offset ${position}`, { cause });
    this.name = "SourceReadError";
    this.position = position;
  }
}

/** The source ended before its size: it shrank after it was opened. */
export class SourceEndedError extends Error {
  readonly position: number;
  readonly expectedSize: number;

  constructor(position: number, expectedSize: number) {
    super(`source shrank: expected ${expectedSize} bytes, got EOF at offset ${position}`);
    this.name = "SourceEndedError";
    this.position = position;
    this.expectedSize = expectedSize;
  }
}
