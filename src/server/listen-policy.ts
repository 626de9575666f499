// Where the daemon may listen. It reads raw disks as a privileged user, so it
// serves a network other than loopback only with TLS and a bearer token, or
// when the operator says --insecure. The policy judges the addresses the
// host resolves to, never the name: a resolver may map "localhost" anywhere
// (0.0.0.0 included). The server then binds exactly the addresses judged
// (server.ts), so nothing is resolved twice.
import * as dns from "node:dns";
import { isIP, isIPv4, isIPv6 } from "node:net";

/** Every address a host name resolves to. */
export type AddressLookup = (host: string) => Promise<readonly string[]>;

/** The system resolver (/etc/hosts, DNS, ...), as grpc-js would use it. */
export const systemLookup: AddressLookup = async (host) => {
  const found = await dns.promises.lookup(host, { all: true, verbatim: true });
  return found.map((entry) => entry.address);
};

/** A --listen host that does not resolve. */
export class ListenResolveError extends Error {
  constructor(host: string, cause: unknown) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code ?? (cause as Error).message;
    super(`--listen: cannot resolve "${host}" (${code})`);
    this.name = "ListenResolveError";
  }
}

/** The host part of "host:port" or "[v6]:port", without brackets. */
export function listenHost(listen: string): string {
  const colon = listen.lastIndexOf(":");
  const host = colon < 0 ? listen : listen.slice(0, colon);
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

/** The port of "host:port". */
export function listenPort(listen: string): number {
  return Number(listen.slice(listen.lastIndexOf(":") + 1));
}

/** "host:port" for an IP address, bracketing IPv6. */
export function joinHostPort(address: string, port: number): string {
  return isIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
}

/**
 * The addresses to bind for `listen`: an IP address as it is, a name as
 * `lookup` resolves it (without duplicates). Throws ListenResolveError.
 */
export async function resolveListenHost(listen: string, lookup: AddressLookup = systemLookup): Promise<string[]> {
  const host = listenHost(listen);
  if (isIP(host) !== 0) return [host];
  let addresses: readonly string[];
  try {
    addresses = await lookup(host);
  } catch (error) {
    throw new ListenResolveError(host, error);
  }
  if (addresses.length === 0) throw new ListenResolveError(host, new Error("no address"));
  return [...new Set(addresses)];
}

/** True for addresses only this machine can reach: 127.0.0.0/8 and ::1 (also IPv4-mapped). Names are never. */
export function isLoopbackAddress(address: string): boolean {
  const text = address.toLowerCase();
  if (isIPv4(text)) return text.startsWith("127.");
  if (isIPv6(text)) {
    if (text === "::1" || text === "0:0:0:0:0:0:0:1") return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(text);
    return mapped !== null && isLoopbackAddress(mapped[1] as string);
  }
  return false;
}

export interface ListenSecurity {
  /** --tls-cert and --tls-key were given. */
  readonly tls: boolean;
  /** --auth-token-file was given. */
  readonly auth: boolean;
  /** --insecure was given. */
  readonly insecure: boolean;
}

/**
 * Why the daemon must not listen on `listen`, which resolved to
 * `addresses`, with `security`; undefined when it may: loopback addresses
 * are always allowed; anything else needs TLS and a token unless --insecure.
 */
export function listenPolicyViolation(
  listen: string,
  addresses: readonly string[],
  security: ListenSecurity,
): string | undefined {
  if (addresses.every(isLoopbackAddress) || security.insecure) return undefined;
  if (security.tls && security.auth) return undefined;
  const missing = [
    ...(security.tls ? [] : ["--tls-cert and --tls-key"]),
    ...(security.auth ? [] : ["--auth-token-file"]),
  ];
  const host = listenHost(listen);
  const resolved = isIP(host) === 0 ? ` (${host} resolves to ${addresses.join(", ")})` : "";
  return (
    `refusing to listen on ${listen}${resolved}: an address other than loopback needs TLS and a bearer token ` +
    `(missing: ${missing.join(", ")}); give them, listen on 127.0.0.1, or pass --insecure to serve ` +
    `without them anyway`
  );
}
