// Request-id deduplication (AIP-155): a start retried with the same
// request id within 24 hours answers with the job it started instead of
// starting another; the same id with a different request is refused.
// Starts with one request id run one after another.
import { EngineError } from "./errors.js";
import type { EngineState } from "./engine-state.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import { requestFingerprint } from "./request-fingerprint.js";
import type { BackupSpec, JobStatus } from "./types.js";
import { checkRequestId } from "./validate-request.js";

/** How long a request id keeps answering with the job it started. */
export const REQUEST_ID_TTL_MS = 24 * 60 * 60 * 1000;

/** The idempotency key of a start and the canonical form of its request. */
export interface RequestIdentity {
  readonly requestId: string;
  readonly requestFingerprint: string;
}

/** Starts a job for a spec; `request` is undefined for a start without a request id. */
export type StartJob = (spec: BackupSpec, request: RequestIdentity | undefined) => Promise<JobStatus>;

/**
 * AIP-155 makes a request id idempotent for the request it came with; the
 * same id with another request is a client bug, and answering with the
 * earlier job would claim the new request was accepted.
 */
function requestIdReused(requestId: string, uuid: string): EngineError {
  return new EngineError(
    "already-exists",
    REASON.REQUEST_ID_REUSED,
    `request_id: ${quote(requestId)} was used by job ${uuid} for a different request within the last 24 hours; ` +
      `send a new request_id for a new backup, or the original request unchanged to get that job`,
    "request_id",
    { uuid },
  );
}

/** Answers a retried request id with its job; otherwise starts a new job with `startJob`. */
export async function startOrReuse(state: EngineState, spec: BackupSpec, startJob: StartJob): Promise<JobStatus> {
  checkRequestId(spec.requestId);
  const requestId = spec.requestId === "" ? undefined : spec.requestId;
  if (requestId === undefined) return startJob(spec, undefined);
  // Starts with one request id run one after another, so that two retries
  // racing each other start one job (a refused start is not remembered:
  // the next one tries for itself).
  for (let pending = state.requests.get(requestId); pending !== undefined; pending = state.requests.get(requestId)) {
    await pending;
  }
  state.ensureOpen();
  const fingerprint = requestFingerprint(spec);
  const earlier = state.registry.findByRequestId(requestId, state.now() - REQUEST_ID_TTL_MS);
  if (earlier !== undefined) {
    // A job stored without a fingerprint (by an older version) cannot tell: it counts as the same request.
    if (earlier.requestFingerprint !== undefined && earlier.requestFingerprint !== fingerprint) {
      throw requestIdReused(requestId, earlier.status.uuid);
    }
    return earlier.status;
  }
  const attempt = startJob(spec, { requestId, requestFingerprint: fingerprint });
  const settled = attempt.then(
    () => undefined,
    () => undefined,
  );
  state.requests.set(requestId, settled);
  try {
    return await attempt;
  } finally {
    if (state.requests.get(requestId) === settled) state.requests.delete(requestId);
  }
}
