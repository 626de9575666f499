// Checks and defaults of a list request: the page size and the state filter.
// The page token is checked by the store, which made it.
import { EngineError } from "./errors.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import type { JobState, ListQuery } from "./types.js";
import { JOB_STATES } from "./types.js";

export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;

export interface ResolvedListQuery {
  readonly pageSize: number;
  readonly pageToken: string | undefined;
  readonly states: readonly JobState[];
}

/**
 * The one page-size check, for the engine and the server (which runs it
 * before converting the rest of a request). 0 means the default; sizes
 * above the maximum are capped, not refused.
 */
export function checkPageSize(pageSize: number): void {
  if (Number.isSafeInteger(pageSize) && pageSize >= 0) return;
  const problem = Number.isSafeInteger(pageSize) ? "is negative" : "is not a whole number of at least 0";
  throw new EngineError("invalid-argument", REASON.PAGE_SIZE_INVALID, `page_size: ${pageSize} ${problem}`, "page_size");
}

/** The query with its defaults applied. Throws EngineError (invalid-argument). */
export function resolveListQuery(query: ListQuery): ResolvedListQuery {
  const { pageSize } = query;
  checkPageSize(pageSize);
  const states = query.states ?? [];
  states.forEach((state, index) => {
    if (!JOB_STATES.includes(state)) {
      const field = `states[${index}]`;
      throw new EngineError(
        "invalid-argument",
        REASON.JOB_STATE_INVALID,
        `${field}: ${quote(String(state))} is not a job state`,
        field,
      );
    }
  });
  return {
    pageSize: pageSize === 0 ? DEFAULT_PAGE_SIZE : Math.min(pageSize, MAX_PAGE_SIZE),
    pageToken: query.pageToken === "" ? undefined : query.pageToken,
    states: [...new Set(states)],
  };
}
