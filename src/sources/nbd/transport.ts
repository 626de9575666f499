// Opens the socket an NBD address names, within a deadline.

import { connect, type OnReadOpts, type Socket } from "node:net";
import { NbdError } from "./errors.js";
import { formatNbdUri, type NbdAddress } from "./uri.js";

/**
 * Connects to the address; rejects with NBD_UNREACHABLE on an error or after
 * `timeoutMs`. What the socket reads goes to `onread` (no 'data' events).
 */
export function openSocket(address: NbdAddress, timeoutMs: number, onread: OnReadOpts): Promise<Socket> {
  const socket =
    address.transport === "unix"
      ? connect({ path: address.socketPath, onread })
      : connect({ host: address.host, port: address.port, noDelay: true, onread });
  const where = formatNbdUri(address);
  return new Promise((resolve, reject) => {
    const fail = (why: string, cause?: unknown): void => {
      cleanup();
      socket.on("error", () => {}); // a late error of a socket given up on must not crash the process
      socket.destroy();
      reject(new NbdError("NBD_UNREACHABLE", `cannot connect to NBD server ${where}: ${why}`, { cause }));
    };
    const onError = (error: Error): void => fail(error.message, error);
    const onConnect = (): void => {
      cleanup();
      resolve(socket);
    };
    const timer = setTimeout(() => fail(`no connection within ${timeoutMs} ms`), timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off("error", onError);
      socket.off("connect", onConnect);
    };
    socket.once("error", onError);
    socket.once("connect", onConnect);
  });
}
