// The exit codes of every vmabackup command, defined once.

export const EXIT_OK = 0;
/**
 * The command's subject failed: a gRPC error, a watched job that ended in
 * ERROR or CANCELLED, an invalid (or, where required, incomplete) archive,
 * a daemon that could not start or stop cleanly.
 */
export const EXIT_FAILURE = 1;
/** The command line itself was wrong (for the vma tools also: reading or writing a file failed). */
export const EXIT_USAGE = 2;
/** The watch was ended with Ctrl-C (128 + SIGINT, as shells report it). */
export const EXIT_INTERRUPTED = 130;
