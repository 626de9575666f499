// NBD URIs (the NBD project's doc/uri.md): nbd://host[:port]/export over TCP
// and nbd+unix:///export?socket=/path over a unix socket. TLS schemes are
// refused with a message, since this client does not speak TLS yet.

import { isAbsolute, normalize } from "node:path";
import { NbdError } from "./errors.js";

export const DEFAULT_NBD_PORT = 10809;

/** Where an export is served: a TCP host and port, or a unix socket, and the export's name. */
export type NbdAddress =
  | { readonly transport: "tcp"; readonly host: string; readonly port: number; readonly exportName: string }
  | { readonly transport: "unix"; readonly socketPath: string; readonly exportName: string };

function bad(uri: string, why: string): NbdError {
  return new NbdError("NBD_BAD_URI", `invalid NBD URI ${JSON.stringify(uri)}: ${why}`);
}

/** The export name is the path without its leading slash, percent-decoded. */
function exportNameOf(uri: string, url: URL): string {
  const path = url.pathname === "" ? "" : url.pathname.slice(1);
  try {
    return decodeURIComponent(path);
  } catch {
    throw bad(uri, "the export name is not valid percent-encoding");
  }
}

function refuseQuery(uri: string, url: URL, allowed: readonly string[]): void {
  for (const key of url.searchParams.keys()) {
    if (!allowed.includes(key)) throw bad(uri, `unsupported query parameter "${key}"`);
  }
}

/** Parses an NBD URI; throws an NbdError (NBD_BAD_URI) saying what to fix. */
export function parseNbdUri(uri: string): NbdAddress {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw bad(uri, "expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=/PATH");
  }
  const scheme = url.protocol.slice(0, -1);
  if (scheme === "nbds" || scheme === "nbds+unix" || scheme === "nbds+vsock") {
    throw bad(uri, `TLS (${scheme}://) is not supported yet; use nbd:// or nbd+unix:// on a trusted network`);
  }
  if (url.username !== "" || url.password !== "") throw bad(uri, "user names and passwords are not supported");
  if (url.hash !== "") throw bad(uri, "a fragment (#...) is not allowed");
  if (scheme === "nbd") {
    refuseQuery(uri, url, []);
    // Host names are case-insensitive; non-special URL schemes keep their case, so fold it here.
    const hostname = url.hostname.toLowerCase();
    const host = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
    if (host === "") throw bad(uri, "nbd:// needs a host, e.g. nbd://127.0.0.1:10809/export");
    const port = url.port === "" ? DEFAULT_NBD_PORT : Number(url.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(uri, "the port must be 1..65535");
    return { transport: "tcp", host, port, exportName: exportNameOf(uri, url) };
  }
  if (scheme === "nbd+unix") {
    refuseQuery(uri, url, ["socket"]);
    if (url.host !== "") throw bad(uri, "nbd+unix:// takes no host: write nbd+unix:///EXPORT?socket=/PATH");
    const sockets = url.searchParams.getAll("socket");
    const socketPath = sockets[0];
    if (sockets.length !== 1 || socketPath === undefined || socketPath === "") {
      throw bad(uri, "nbd+unix:// needs exactly one ?socket=/PATH");
    }
    if (!isAbsolute(socketPath)) throw bad(uri, "the socket path must be absolute");
    return { transport: "unix", socketPath: normalize(socketPath), exportName: exportNameOf(uri, url) };
  }
  throw bad(uri, `unsupported scheme "${scheme}://"; use nbd:// or nbd+unix://`);
}

/**
 * The canonical URI of an address: explicit port, lower-case host, bracketed
 * IPv6, normalized socket path. Two spellings of one export give one string.
 */
export function formatNbdUri(address: NbdAddress): string {
  const exportPath = encodeURIComponent(address.exportName).replaceAll("%2F", "/");
  if (address.transport === "unix") {
    return `nbd+unix:///${exportPath}?socket=${encodeURIComponent(address.socketPath).replaceAll("%2F", "/")}`;
  }
  const host = address.host.includes(":") ? `[${address.host.toLowerCase()}]` : address.host.toLowerCase();
  return `nbd://${host}:${address.port}/${exportPath}`;
}
