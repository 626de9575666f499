// Numbers of the NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md), the
// subset a read-only client speaks: fixed newstyle handshake, NBD_OPT_GO,
// structured replies and base:allocation block status.

/** "NBDMAGIC": the first 8 bytes every server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle servers send it after NBDMAGIC; clients prefix every option with it. */
export const IHAVEOPT = 0x49484156454f5054n;
/** What an oldstyle server sends instead of IHAVEOPT. */
export const OLDSTYLE_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;

export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;

export const OPT_ABORT = 2;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_SET_META_CONTEXT = 10;

export const REP_ACK = 1;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
/** Option replies with this bit set are errors. */
export const REP_ERROR_BIT = 0x80000000;

const OPTION_ERROR_NAMES: Readonly<Record<number, string>> = {
  1: "NBD_REP_ERR_UNSUP",
  2: "NBD_REP_ERR_POLICY",
  3: "NBD_REP_ERR_INVALID",
  4: "NBD_REP_ERR_PLATFORM",
  5: "NBD_REP_ERR_TLS_REQD",
  6: "NBD_REP_ERR_UNKNOWN",
  7: "NBD_REP_ERR_SHUTDOWN",
  8: "NBD_REP_ERR_BLOCK_SIZE_REQD",
  9: "NBD_REP_ERR_TOO_BIG",
  10: "NBD_REP_ERR_EXT_HEADER_REQD",
};
export const REP_ERR_UNSUP = REP_ERROR_BIT + 1;
export const REP_ERR_POLICY = REP_ERROR_BIT + 2;
export const REP_ERR_TLS_REQD = REP_ERROR_BIT + 5;
export const REP_ERR_UNKNOWN = REP_ERROR_BIT + 6;

export const INFO_EXPORT = 0;
export const INFO_BLOCK_SIZE = 3;

/** Transmission flags (NBD_INFO_EXPORT). */
export const TRANSMISSION_HAS_FLAGS = 1 << 0;
export const TRANSMISSION_READ_ONLY = 1 << 1;

export const CMD_READ = 0;
export const CMD_DISC = 2;
export const CMD_BLOCK_STATUS = 7;

export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR_BIT = 1 << 15;
export const REPLY_TYPE_ERROR = REPLY_TYPE_ERROR_BIT + 1;
export const REPLY_TYPE_ERROR_OFFSET = REPLY_TYPE_ERROR_BIT + 2;

export const BASE_ALLOCATION = "base:allocation";
/** base:allocation status bits. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

/** Maximum payload the protocol lets a server assume when it advertises none. */
export const DEFAULT_MAX_BLOCK_SIZE = 32 * 1024 * 1024;

export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const STRUCTURED_REPLY_BYTES = 20;
export const OPTION_REPLY_HEADER_BYTES = 20;

const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  5: "EIO",
  12: "ENOMEM",
  22: "EINVAL",
  28: "ENOSPC",
  75: "EOVERFLOW",
  95: "ENOTSUP",
  108: "ESHUTDOWN",
};

/** The name of an NBD error value as the spec calls it (EIO), or its number. */
export function errnoName(value: number): string {
  return ERRNO_NAMES[value] ?? `error ${value}`;
}

/** The name of an option reply type when it is an error (NBD_REP_ERR_UNKNOWN). */
export function optionErrorName(replyType: number): string {
  return OPTION_ERROR_NAMES[replyType - REP_ERROR_BIT] ?? `option error 0x${replyType.toString(16)}`;
}
