// The metadata keys both ends of a call agree on: where the bearer token
// travels and where a failed call's rich status comes back.

/** The metadata key the token travels in (grpc-js keys are lower case). */
export const AUTHORIZATION_KEY = "authorization";

/** The trailer gRPC defines for a serialised google.rpc.Status. */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";
