// How the auth interceptor tells reflection that a caller brought no token.
// Reflection then answers for the public files only (health, reflection and
// the standard google.rpc error types), so that `grpcurl ... Health/Check`
// works without a token while the backup API stays hidden. The interceptor
// removes any value a client sent itself; a client that sets it anyway can
// only narrow its own view. Without auth there is no interceptor and no
// marker: everything is visible, as every RPC is callable.

/** Metadata key the auth interceptor sets on anonymous reflection calls. */
export const REFLECTION_SCOPE_KEY = "x-vmabackup-reflection-scope";

/** The value that limits a reflection call to the public files. */
export const PUBLIC_SCOPE = "public";
