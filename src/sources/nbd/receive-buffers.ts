// Buffers the NBD socket reads into (net's `onread`), handed back once the
// reply parser consumed them. With plain 'data' events every read of a
// gigabyte export allocated a fresh 64 KiB buffer (garbage to collect, and
// a syscall per 64 KiB); here a read takes up to a whole buffer and the
// buffers go round.
import type { OnReadOpts } from "node:net";
import type { ByteQueue } from "./byte-queue.js";

/**
 * Large enough that a read drains what a unix socket holds (~200 KiB) in one
 * call; `npm run bench:nbd` read a 1 GiB export faster with 256 KiB than
 * with 64 KiB or 1 MiB.
 */
export const RECEIVE_BUFFER_BYTES = 256 * 1024;
/**
 * Free buffers kept for later reads. More may be in use at once (replies the
 * parser has not reached yet); those beyond it are left to the GC when
 * consumed, so a burst does not stay in memory for the connection's life.
 */
const FREE_BUFFERS_KEPT = 8;

/** The `onread` option that reads the socket into recycled buffers and queues what arrived. */
export function receiveInto(queue: ByteQueue, bufferBytes: number = RECEIVE_BUFFER_BYTES): OnReadOpts {
  const free: Buffer[] = [];
  const recycle = (buffer: Buffer): void => {
    if (free.length < FREE_BUFFERS_KEPT) free.push(buffer);
  };
  return {
    buffer: () => free.pop() ?? Buffer.allocUnsafeSlow(bufferBytes),
    callback: (bytes, buffer) => {
      const full = buffer as Buffer;
      queue.push(full.subarray(0, bytes), () => recycle(full));
      return true;
    },
  };
}
