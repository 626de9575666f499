// The largest request the server reads: what the largest valid Backup
// request encodes to, worked out from the API's limits, so that nothing
// larger is ever held in memory (grpc-js refuses a message from its length
// prefix, before reading it). Every other request is far smaller.
import {
  MAX_CONFIGS_PER_JOB,
  MAX_DEVICE_NAME_BYTES,
  MAX_DEVICES_PER_JOB,
  MAX_HEADER_BLOB_BYTES,
  MAX_PATH_BYTES,
  MAX_REQUEST_ID_BYTES,
} from "../engine/index.js";

/** Bytes of a protobuf varint holding `value`. */
function varintBytes(value: number): number {
  let bytes = 1;
  for (let rest = value; rest >= 0x80; rest = Math.floor(rest / 0x80)) bytes += 1;
  return bytes;
}

/** A length-delimited field of `length` bytes: tag, length, payload (field numbers < 16: 1-byte tag). */
function lengthDelimited(length: number): number {
  return 1 + varintBytes(length) + length;
}

/** A varint field: tag and at most 10 bytes (a negative enum takes 10). */
const VARINT_FIELD = 1 + 10;

/** Device { name, path } at their longest. */
const LARGEST_DEVICE = lengthDelimited(lengthDelimited(MAX_DEVICE_NAME_BYTES) + lengthDelimited(MAX_PATH_BYTES));

/**
 * Every config at once: their names and data share the header's blob
 * buffer, so together they hold at most MAX_HEADER_BLOB_BYTES; each adds
 * at most 3 tags and 3 lengths of 3 bytes (payloads < 2 MiB).
 */
const LARGEST_CONFIGS = MAX_HEADER_BLOB_BYTES + MAX_CONFIGS_PER_JOB * 12;

/** Upper bound of an encoded valid BackupRequest. */
export const LARGEST_VALID_REQUEST_BYTES =
  lengthDelimited(MAX_PATH_BYTES) + // backup_file
  VARINT_FIELD + // format
  MAX_DEVICES_PER_JOB * LARGEST_DEVICE +
  LARGEST_CONFIGS +
  VARINT_FIELD + // speed_limit
  lengthDelimited(MAX_REQUEST_ID_BYTES);
