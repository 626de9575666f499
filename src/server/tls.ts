// Transport security of the daemon: TLS server credentials from PEM files
// (mutual TLS when a client CA is given: a client without a certificate that
// CA signed cannot even connect), and the listen policy: the daemon reads raw
// disks as a privileged user, so it serves a network other than loopback
// only with TLS and a bearer token, or when the operator says --insecure.
import { createPrivateKey, X509Certificate } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
import { isIPv4, isIPv6 } from "node:net";
import * as grpc from "@grpc/grpc-js";

export interface ServerTlsFiles {
  /** PEM certificate chain of the server (--tls-cert). */
  readonly certFile: string;
  /** PEM private key of that certificate (--tls-key). */
  readonly keyFile: string;
  /** PEM CA certificates client certificates must chain to (--tls-client-ca); enables mutual TLS. */
  readonly clientCaFile?: string;
}

/** A TLS file that cannot be used; the message names the flag and the file. */
export class TlsConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TlsConfigError";
  }
}

async function readPem(flag: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new TlsConfigError(`${flag} ${file}: cannot be read (${code})`);
  }
}

/** Parses the first certificate of a PEM file, so that a wrong file fails at start, not at the first handshake. */
function parseCertificate(flag: string, file: string, pem: Buffer): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch {
    throw new TlsConfigError(`${flag} ${file}: not a PEM certificate`);
  }
}

/**
 * Server credentials for `files`: TLS with the given certificate and key,
 * plus required and verified client certificates when a client CA is given.
 * Checks that the files parse and that the key belongs to the certificate.
 * Throws TlsConfigError.
 */
export async function loadServerCredentials(files: ServerTlsFiles): Promise<grpc.ServerCredentials> {
  const [certChain, privateKey, clientCa] = await Promise.all([
    readPem("--tls-cert", files.certFile),
    readPem("--tls-key", files.keyFile),
    files.clientCaFile === undefined ? undefined : readPem("--tls-client-ca", files.clientCaFile),
  ]);
  const certificate = parseCertificate("--tls-cert", files.certFile, certChain);
  let key: KeyObject;
  try {
    key = createPrivateKey(privateKey);
  } catch {
    throw new TlsConfigError(`--tls-key ${files.keyFile}: not a PEM private key`);
  }
  if (!certificate.checkPrivateKey(key)) {
    throw new TlsConfigError(`--tls-key ${files.keyFile} does not belong to --tls-cert ${files.certFile}`);
  }
  if (clientCa !== undefined && files.clientCaFile !== undefined) {
    parseCertificate("--tls-client-ca", files.clientCaFile, clientCa);
  }
  return grpc.ServerCredentials.createSsl(
    clientCa ?? null,
    [{ private_key: privateKey, cert_chain: certChain }],
    clientCa !== undefined,
  );
}

/** The host part of "host:port" or "[v6]:port", without brackets. */
export function listenHost(listen: string): string {
  const colon = listen.lastIndexOf(":");
  const host = colon < 0 ? listen : listen.slice(0, colon);
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

/** True for addresses only this machine can reach: 127.0.0.0/8, ::1 (also IPv4-mapped) and "localhost". */
export function isLoopbackHost(host: string): boolean {
  const name = host.toLowerCase();
  if (name === "localhost") return true;
  if (isIPv4(name)) return name.startsWith("127.");
  if (isIPv6(name)) {
    if (name === "::1" || name === "0:0:0:0:0:0:0:1") return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(name);
    return mapped !== null && isLoopbackHost(mapped[1] as string);
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
 * Why the daemon must not listen on `listen` with `security`, or undefined
 * when it may: loopback is always allowed; any other address needs TLS and
 * a token unless --insecure.
 */
export function listenPolicyViolation(listen: string, security: ListenSecurity): string | undefined {
  if (isLoopbackHost(listenHost(listen)) || security.insecure) return undefined;
  if (security.tls && security.auth) return undefined;
  const missing = [
    ...(security.tls ? [] : ["--tls-cert and --tls-key"]),
    ...(security.auth ? [] : ["--auth-token-file"]),
  ];
  return (
    `refusing to listen on ${listen}: an address other than loopback needs TLS and a bearer token ` +
    `(missing: ${missing.join(", ")}); give them, listen on 127.0.0.1, or pass --insecure to serve ` +
    `without them anyway`
  );
}
