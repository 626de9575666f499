// The fixed newstyle handshake: ask for structured replies and the
// base:allocation metadata context, then NBD_OPT_GO with a block size request.
// Every step waits at most `stepTimeoutMs`; whatever the server answers that
// the spec does not allow is an NbdError, never a hang.

import type { Socket } from "node:net";
import type { ByteQueue } from "./byte-queue.js";
import { NbdError } from "./errors.js";
import {
  BASE_ALLOCATION,
  DEFAULT_MAX_BLOCK_SIZE,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  NBD_MAGIC,
  OLDSTYLE_MAGIC,
  OPT_GO,
  OPT_SET_META_CONTEXT,
  OPT_STRUCTURED_REPLY,
  OPTION_REPLY_HEADER_BYTES,
  OPTION_REPLY_MAGIC,
  optionErrorName,
  REP_ACK,
  REP_ERR_TLS_REQD,
  REP_ERR_UNKNOWN,
  REP_ERROR_BIT,
  REP_INFO,
  REP_META_CONTEXT,
} from "./protocol.js";

/** What the handshake learnt about the export and the connection. */
export interface NbdExportInfo {
  readonly size: number;
  readonly transmissionFlags: number;
  /** Block size constraints (NBD_INFO_BLOCK_SIZE, or the protocol's defaults). */
  readonly minBlockSize: number;
  readonly preferredBlockSize: number;
  readonly maxBlockSize: number;
  readonly structuredReplies: boolean;
  /** Context id of base:allocation, when the server agreed to it. */
  readonly allocationContextId: number | undefined;
}

/** Option replies longer than this are refused (a server cannot make us buffer without bound). */
const MAX_OPTION_REPLY_BYTES = 64 * 1024;

interface OptionReply {
  readonly type: number;
  readonly data: Buffer;
}

/** Runs the handshake on a connected socket whose incoming bytes feed `queue`. */
export async function negotiate(
  socket: Socket,
  queue: ByteQueue,
  exportName: string,
  stepTimeoutMs: number,
): Promise<NbdExportInfo> {
  const step = <T>(what: string, work: Promise<T>): Promise<T> => withTimeout(work, stepTimeoutMs, what);

  const greeting = await step("the server greeting", queue.read(18));
  if (greeting.readBigUInt64BE(0) !== NBD_MAGIC) throw handshakeError("the server greeting lacks NBDMAGIC");
  const style = greeting.readBigUInt64BE(8);
  if (style === OLDSTYLE_MAGIC) throw handshakeError("the server speaks the oldstyle protocol, which is not supported");
  if (style !== IHAVEOPT) throw handshakeError("the server greeting lacks IHAVEOPT");
  const serverFlags = greeting.readUInt16BE(16);
  if ((serverFlags & FLAG_FIXED_NEWSTYLE) === 0) {
    throw handshakeError("the server does not speak fixed newstyle negotiation");
  }
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
  socket.write(clientFlags);

  const exchange = async (option: number, data: Buffer, what: string): Promise<OptionReply> => {
    sendOption(socket, option, data);
    return step(what, readOptionReply(queue, option));
  };

  const structured = await exchange(OPT_STRUCTURED_REPLY, Buffer.alloc(0), "the NBD_OPT_STRUCTURED_REPLY reply");
  const structuredReplies = structured.type === REP_ACK;
  if (!structuredReplies && (structured.type & REP_ERROR_BIT) === 0) {
    throw handshakeError(`unexpected reply type ${structured.type} to NBD_OPT_STRUCTURED_REPLY`);
  }

  let allocationContextId: number | undefined;
  if (structuredReplies) {
    let reply = await exchange(
      OPT_SET_META_CONTEXT,
      metaContextRequest(exportName),
      "the NBD_OPT_SET_META_CONTEXT reply",
    );
    while (reply.type === REP_META_CONTEXT) {
      if (reply.data.length < 4) throw handshakeError("NBD_REP_META_CONTEXT shorter than its context id");
      const name = reply.data.toString("utf8", 4);
      if (name !== BASE_ALLOCATION) throw handshakeError(`the server chose a meta context not asked for: ${name}`);
      allocationContextId = reply.data.readUInt32BE(0);
      reply = await step("the NBD_OPT_SET_META_CONTEXT reply", readOptionReply(queue, OPT_SET_META_CONTEXT));
    }
    // An error reply only means "no block status": everything is read then.
    if (reply.type !== REP_ACK && (reply.type & REP_ERROR_BIT) === 0) {
      throw handshakeError(`unexpected reply type ${reply.type} to NBD_OPT_SET_META_CONTEXT`);
    }
    if ((reply.type & REP_ERROR_BIT) !== 0) allocationContextId = undefined;
  }

  let size: number | undefined;
  let transmissionFlags = 0;
  let blockSizes: readonly [number, number, number] | undefined;
  let reply = await exchange(OPT_GO, goRequest(exportName), "the NBD_OPT_GO reply");
  while (reply.type === REP_INFO) {
    const data = reply.data;
    if (data.length < 2) throw handshakeError("NBD_REP_INFO shorter than its type");
    const infoType = data.readUInt16BE(0);
    if (infoType === INFO_EXPORT) {
      if (data.length !== 12) throw handshakeError(`NBD_INFO_EXPORT of ${data.length} bytes, expected 12`);
      const size64 = data.readBigUInt64BE(2);
      if (size64 > BigInt(Number.MAX_SAFE_INTEGER)) throw handshakeError(`export size ${size64} is too large`);
      size = Number(size64);
      transmissionFlags = data.readUInt16BE(10);
    } else if (infoType === INFO_BLOCK_SIZE) {
      if (data.length !== 14) throw handshakeError(`NBD_INFO_BLOCK_SIZE of ${data.length} bytes, expected 14`);
      blockSizes = checkBlockSizes(data.readUInt32BE(2), data.readUInt32BE(6), data.readUInt32BE(10));
    }
    reply = await step("the NBD_OPT_GO reply", readOptionReply(queue, OPT_GO));
  }
  if (reply.type !== REP_ACK) throw goError(reply, exportName);
  if (size === undefined) throw handshakeError("the server ended NBD_OPT_GO without NBD_INFO_EXPORT");
  const [minBlockSize, preferredBlockSize, maxBlockSize] = blockSizes ?? [1, 4096, DEFAULT_MAX_BLOCK_SIZE];
  return {
    size,
    transmissionFlags,
    minBlockSize,
    preferredBlockSize,
    maxBlockSize,
    structuredReplies,
    allocationContextId,
  };
}

function handshakeError(message: string): NbdError {
  return new NbdError("NBD_HANDSHAKE", `NBD handshake failed: ${message}`);
}

/** The spec's constraints on NBD_INFO_BLOCK_SIZE: powers of two, min <= preferred, max a multiple of min. */
function checkBlockSizes(min: number, preferred: number, max: number): [number, number, number] {
  const powerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
  // The maximum is a multiple of the minimum, or 0xffffffff for "no limit beyond the protocol's".
  const maxOk = max >= min && (max % min === 0 || max === 0xffff_ffff);
  if (!powerOfTwo(min) || min > 64 * 1024 || !powerOfTwo(preferred) || preferred < min || !maxOk) {
    throw handshakeError(`invalid NBD_INFO_BLOCK_SIZE min ${min} preferred ${preferred} max ${max}`);
  }
  return [min, preferred, max];
}

function goError(reply: OptionReply, exportName: string): NbdError {
  if ((reply.type & REP_ERROR_BIT) === 0) return handshakeError(`unexpected reply type ${reply.type} to NBD_OPT_GO`);
  const said = reply.data.length > 0 ? `: ${reply.data.toString("utf8", 0, Math.min(reply.data.length, 256))}` : "";
  if (reply.type === REP_ERR_UNKNOWN) {
    return new NbdError(
      "NBD_EXPORT_NOT_FOUND",
      `the NBD server has no export named ${JSON.stringify(exportName)}${said}`,
    );
  }
  if (reply.type === REP_ERR_TLS_REQD) return handshakeError(`the server requires TLS, which is not supported${said}`);
  return handshakeError(
    `the server refused export ${JSON.stringify(exportName)} with ${optionErrorName(reply.type)}${said}`,
  );
}

function sendOption(socket: Socket, option: number, data: Buffer): void {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(IHAVEOPT, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(data.length, 12);
  socket.write(data.length === 0 ? header : Buffer.concat([header, data]));
}

async function readOptionReply(queue: ByteQueue, option: number): Promise<OptionReply> {
  const header = await queue.read(OPTION_REPLY_HEADER_BYTES);
  if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw handshakeError("option reply with a bad magic");
  const repliedOption = header.readUInt32BE(8);
  if (repliedOption !== option)
    throw handshakeError(`reply for option ${repliedOption} while option ${option} was asked`);
  const type = header.readUInt32BE(12);
  const length = header.readUInt32BE(16);
  if (length > MAX_OPTION_REPLY_BYTES) throw handshakeError(`option reply of ${length} bytes is too long`);
  const data = length === 0 ? Buffer.alloc(0) : Buffer.from(await queue.read(length));
  return { type, data };
}

/** NBD_OPT_SET_META_CONTEXT data: export name, then one query, base:allocation. */
function metaContextRequest(exportName: string): Buffer {
  const name = Buffer.from(exportName, "utf8");
  const query = Buffer.from(BASE_ALLOCATION, "utf8");
  const data = Buffer.alloc(4 + name.length + 4 + 4 + query.length);
  let at = data.writeUInt32BE(name.length, 0);
  at += name.copy(data, at);
  at = data.writeUInt32BE(1, at);
  at = data.writeUInt32BE(query.length, at);
  query.copy(data, at);
  return data;
}

/** NBD_OPT_GO data: export name, then one information request, NBD_INFO_BLOCK_SIZE. */
function goRequest(exportName: string): Buffer {
  const name = Buffer.from(exportName, "utf8");
  const data = Buffer.alloc(4 + name.length + 2 + 2);
  let at = data.writeUInt32BE(name.length, 0);
  at += name.copy(data, at);
  at = data.writeUInt16BE(1, at);
  data.writeUInt16BE(INFO_BLOCK_SIZE, at);
  return data;
}

/** Rejects with an NBD_TIMEOUT error when `work` takes longer than `ms`. */
export function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new NbdError("NBD_TIMEOUT", `timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
