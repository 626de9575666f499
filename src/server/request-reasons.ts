// Stable reasons (google.rpc.ErrorInfo.reason) of the refusals only the
// server can find while decoding a request: rules of an RPC that the
// engine's API cannot express (its uuid arguments mean "latest" or "all"
// when empty, where these RPCs require one). Everything else uses the
// engine's REASON list. Like that list, a reason here is never renamed or
// reused for another case.

export const REQUEST_REASON = {
  /** A required uuid field is empty. */
  UUID_REQUIRED: "UUID_REQUIRED",
} as const;

export type RequestReason = (typeof REQUEST_REASON)[keyof typeof REQUEST_REASON];
