// How a failing job store is answered: not as an internal error (nothing is
// wrong with the request or the server's code) but as a condition the
// operator can fix and the client can retry after: RESOURCE_EXHAUSTED when
// the state dir is full, UNAVAILABLE when its database cannot be used now.
import { storeErrorCode, storeFailureOf } from "../store/store-errors.js";
import { EngineError } from "./errors.js";
import { REASON } from "./reasons.js";

/**
 * The refusal for a store failure while doing `what` (e.g. "cannot record
 * a new job"), or undefined when `error` is not a store failure.
 */
export function storeRefusal(error: unknown, what: string): EngineError | undefined {
  if (error instanceof EngineError) return undefined;
  const failure = storeFailureOf(error);
  if (failure === undefined) return undefined;
  const code = storeErrorCode(error);
  const refusal =
    failure === "full"
      ? new EngineError(
          "resource-exhausted",
          REASON.STATE_STORE_FULL,
          `${what}: the job store is full (${code}); free space in the server's state dir, then retry`,
        )
      : new EngineError(
          "unavailable",
          REASON.STATE_STORE_UNAVAILABLE,
          `${what}: the job store cannot be used now (${code}); retry later, and check the server's state dir`,
        );
  (refusal as { cause?: unknown }).cause = error;
  return refusal;
}
