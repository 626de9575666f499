// Buffers the NBD socket reads into (net's `onread`), handed back once the
// reply parser consumed them. With plain 'data' events every read of a
// gigabyte export allocated a fresh 64 KiB buffer (garbage to collect, and
// a syscall per 64 KiB); here a read takes up to a whole buffer and the
// buffers go round.
import type { OnReadOpts } from "node:net";
import type { ByteQueue } from "./byte-queue.js";

/** Large enough that a read drains what a unix socket holds (~200 KiB) in one call. */
export const RECEIVE_BUFFER_BYTES = 256 * 1024;

/** The `onread` option that reads the socket into recycled buffers and queues what arrived. */
export function receiveInto(queue: ByteQueue, bufferBytes: number = RECEIVE_BUFFER_BYTES): OnReadOpts {
  const free: Buffer[] = [];
  const recycle = (buffer: Buffer): void => {
    free.push(buffer);
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
