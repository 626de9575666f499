// A failure while a job runs (read error, archive write error, shrinking
// source), carrying the message the job's status will show.
import { errnoOf } from "./errno.js";

export class JobFailure extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "JobFailure";
  }
}

/** The errno code of an error when it has one (EIO, ENOSPC, ...), else its message. */
export function describeError(error: unknown): string {
  const code = errnoOf(error);
  if (typeof code === "string") return code;
  return error instanceof Error ? error.message : String(error);
}
