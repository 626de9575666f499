// Throwaway certificates for TLS tests, made with Debian's `openssl` at test
// time in a temporary directory (never committed): a server CA and a server
// certificate for localhost / 127.0.0.1, a client CA and a client
// certificate for mutual TLS, and a second, unrelated CA with its own client
// certificate that no server trusts.
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** A certificate and its key, as files and as PEM bytes. */
export interface CertificateFiles {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: Buffer;
  readonly key: Buffer;
}

export interface TestCertificates {
  /** Signs the server certificate. */
  readonly serverCa: CertificateFiles;
  /** CN=localhost with subjectAltName DNS:localhost and IP:127.0.0.1. */
  readonly server: CertificateFiles;
  /** Signs client certificates the server accepts (--tls-client-ca). */
  readonly clientCa: CertificateFiles;
  /** Signed by clientCa. */
  readonly client: CertificateFiles;
  /** A CA nobody trusts, and a client certificate it signed. */
  readonly rogueCa: CertificateFiles;
  readonly rogueClient: CertificateFiles;
}

/** EC P-256 keys: generated in milliseconds, unlike RSA. */
const KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

async function load(certFile: string, keyFile: string): Promise<CertificateFiles> {
  const [cert, key] = await Promise.all([readFile(certFile), readFile(keyFile)]);
  return { certFile, keyFile, cert, key };
}

async function makeCa(dir: string, name: string): Promise<CertificateFiles> {
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  await run("openssl", [
    "req",
    "-x509",
    ...KEY_ARGS,
    "-keyout",
    keyFile,
    "-out",
    certFile,
    "-days",
    "2",
    "-subj",
    `/CN=vmabackup test ${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  return load(certFile, keyFile);
}

/** A leaf certificate signed by `ca` (OpenSSL 3: `req -x509 -CA`). */
async function makeLeaf(
  dir: string,
  name: string,
  ca: CertificateFiles,
  commonName: string,
  extensions: readonly string[],
): Promise<CertificateFiles> {
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  await run("openssl", [
    "req",
    "-x509",
    ...KEY_ARGS,
    "-CA",
    ca.certFile,
    "-CAkey",
    ca.keyFile,
    "-keyout",
    keyFile,
    "-out",
    certFile,
    "-days",
    "2",
    "-subj",
    `/CN=${commonName}`,
    "-addext",
    "basicConstraints=critical,CA:FALSE",
    ...extensions.flatMap((extension) => ["-addext", extension]),
  ]);
  return load(certFile, keyFile);
}

/** Generates every certificate into `dir` (which the caller removes). */
export async function makeTestCertificates(dir: string): Promise<TestCertificates> {
  const [serverCa, clientCa, rogueCa] = await Promise.all([
    makeCa(dir, "server-ca"),
    makeCa(dir, "client-ca"),
    makeCa(dir, "rogue-ca"),
  ]);
  const [server, client, rogueClient] = await Promise.all([
    makeLeaf(dir, "server", serverCa, "localhost", [
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "extendedKeyUsage=serverAuth",
    ]),
    makeLeaf(dir, "client", clientCa, "vmabackup-client", ["extendedKeyUsage=clientAuth"]),
    makeLeaf(dir, "rogue-client", rogueCa, "vmabackup-client", ["extendedKeyUsage=clientAuth"]),
  ]);
  return { serverCa, server, clientCa, client, rogueCa, rogueClient };
}

/** Writes a token file (mode 0600) and returns its path. */
export async function writeTokenFile(dir: string, name: string, lines: readonly string[]): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, `${lines.join("\n")}\n`, { mode: 0o600 });
  return file;
}
