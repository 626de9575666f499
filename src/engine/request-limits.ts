// The most a valid backup request can hold, beyond the per-field limits of
// validate-request.ts: the transport sizes its message limit from these
// (src/server/message-limits.ts) so that no request larger than a valid one
// is ever read into memory.
import { MAX_BLOB_BUFFER_SIZE } from "../vma/constants.js";

/** Longest path Linux opens (PATH_MAX 4096, its NUL included): device paths and backup_file. */
export const MAX_PATH_BYTES = 4095;

/**
 * Config names and data and device names together: all of them go into the
 * VMA header's blob buffer, which Proxmox caps (see vma/encode-limits.ts).
 */
export const MAX_HEADER_BLOB_BYTES = MAX_BLOB_BUFFER_SIZE;
