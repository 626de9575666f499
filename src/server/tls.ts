// Transport security of the daemon: TLS server credentials from PEM files
// (mutual TLS when a client CA is given: a client without a certificate that
// CA signed cannot even connect). Where TLS is required: listen-policy.ts.
import { createPrivateKey, X509Certificate } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
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
