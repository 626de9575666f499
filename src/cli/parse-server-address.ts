// Parses --server: HOST:PORT (an IPv6 host in brackets) or a grpc-js
// "unix:" target, so that a typo is a usage error rather than a connection
// error after a timeout.
import { ArgumentSyntaxError } from "./parse-error.js";

export const DEFAULT_SERVER_ADDRESS = "127.0.0.1:50051";

const HOST_PORT_PATTERN = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):(\d{1,5})$/;

/** Returns the address unchanged when it is a usable gRPC target. */
export function parseServerAddress(text: string): string {
  if (text.startsWith("unix:") && text.length > "unix:".length) {
    return text;
  }
  const match = HOST_PORT_PATTERN.exec(text);
  const port = match === null ? NaN : Number(match[2]);
  if (!(port >= 1 && port <= 65535)) {
    throw new ArgumentSyntaxError(`expected HOST:PORT (e.g. ${DEFAULT_SERVER_ADDRESS})`);
  }
  return text;
}
