// The gRPC client the client commands share, and the frame every command
// runs in: connect (with TLS and a bearer token when asked), run, report a
// failure as `error: ...` with its exit code, close the channel.
import { readFile } from "node:fs/promises";
import * as grpc from "@grpc/grpc-js";
import { Option, type Command } from "commander";
import { BackupService } from "../../gen/vmabackup/v1/backup_pb.js";
import { bearerTokenInterceptor } from "../client/bearer-token.js";
import { createClient, type ClientOf } from "../client/grpc-client.js";
import { reportError, UsageError } from "./client-errors.js";

export type BackupClient = ClientOf<typeof BackupService>;

/** The environment variable that holds the bearer token when --token-file is not given. */
export const TOKEN_ENVIRONMENT_VARIABLE = "VMABACKUP_TOKEN";

/** What addSecurityOptions adds to a command's options. */
export interface SecurityOptions {
  /** File whose first token line is sent as the bearer token. */
  readonly tokenFile?: string;
  /** PEM CA certificates the server's certificate must chain to; enables TLS. */
  readonly tlsCa?: string;
  /** PEM client certificate for mutual TLS (with tlsKey); enables TLS. */
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  /** The name the server's certificate must carry, when it differs from the --server host. */
  readonly tlsServerName?: string;
}

/** Where and how a client command connects. */
export interface ClientConnectionOptions extends SecurityOptions {
  /** "host:port" of the server. */
  readonly server: string;
}

/**
 * Unary calls answer at once (Backup only validates before it returns), so
 * a server that accepts the connection but never answers is a failure, not
 * something to wait for forever.
 */
const UNARY_TIMEOUT_MS = 30_000;

/** The deadline for one unary call started now. */
export function unaryDeadline(): Date {
  return new Date(Date.now() + UNARY_TIMEOUT_MS);
}

/** --token-file and the --tls-* client flags; every client command gets them. */
export function addSecurityOptions(command: Command): Command {
  return command
    .addOption(
      new Option(
        "--token-file <file>",
        `send the first token in this file as a bearer token (default: $${TOKEN_ENVIRONMENT_VARIABLE})`,
      ),
    )
    .option("--tls-ca <file>", "connect with TLS, trusting the server certificate this PEM CA signed")
    .option("--tls-cert <file>", "client certificate (PEM) for servers that require mutual TLS; needs --tls-key")
    .option("--tls-key <file>", "private key (PEM) of --tls-cert")
    .option("--tls-server-name <name>", "name to expect in the server's certificate (default: the --server host)");
}

async function readOptionFile(flag: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new UsageError(`${flag} ${file}: cannot be read (${code})`);
  }
}

/** The first token line of a token file (blank and "#" lines skipped), as the server reads them. */
export async function readClientToken(file: string): Promise<string> {
  const text = (await readOptionFile("--token-file", file)).toString("utf8");
  const token = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .find((line) => line !== "" && !line.startsWith("#"));
  if (token === undefined) throw new UsageError(`--token-file ${file}: holds no token`);
  return token;
}

/** The bearer token to send: --token-file first, then the environment; undefined for none. */
async function bearerToken(options: SecurityOptions): Promise<string | undefined> {
  if (options.tokenFile !== undefined) return readClientToken(options.tokenFile);
  const token = process.env[TOKEN_ENVIRONMENT_VARIABLE]?.trim();
  return token === undefined || token === "" ? undefined : token;
}

function usesTls(options: SecurityOptions): boolean {
  return (
    options.tlsCa !== undefined ||
    options.tlsCert !== undefined ||
    options.tlsKey !== undefined ||
    options.tlsServerName !== undefined
  );
}

async function channelCredentials(options: SecurityOptions): Promise<grpc.ChannelCredentials> {
  if (!usesTls(options)) return grpc.credentials.createInsecure();
  if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  const [ca, cert, key] = await Promise.all([
    options.tlsCa === undefined ? undefined : readOptionFile("--tls-ca", options.tlsCa),
    options.tlsCert === undefined ? undefined : readOptionFile("--tls-cert", options.tlsCert),
    options.tlsKey === undefined ? undefined : readOptionFile("--tls-key", options.tlsKey),
  ]);
  // Without --tls-ca the system's CAs are trusted.
  return grpc.credentials.createSsl(ca ?? null, key ?? null, cert ?? null);
}

/** The grpc-js pieces of a client connection: credentials and channel options. */
export interface ClientChannelSettings {
  readonly credentials: grpc.ChannelCredentials;
  readonly channelOptions: grpc.ChannelOptions;
}

/**
 * Credentials and channel options for `options`: TLS when any --tls-* flag
 * is given, the bearer token (also over plaintext, which the server allows
 * on loopback) on every call. Throws UsageError for unreadable files.
 */
export async function clientChannelSettings(options: SecurityOptions): Promise<ClientChannelSettings> {
  const credentials = await channelCredentials(options);
  const token = await bearerToken(options);
  const channelOptions: grpc.ChannelOptions = {};
  if (options.tlsServerName !== undefined) {
    channelOptions["grpc.ssl_target_name_override"] = options.tlsServerName;
    channelOptions["grpc.default_authority"] = options.tlsServerName;
  }
  if (token !== undefined) channelOptions.interceptors = [bearerTokenInterceptor(token)];
  return { credentials, channelOptions };
}

/** Connects to `options.server` as the flags say. */
export async function connect(options: ClientConnectionOptions): Promise<BackupClient> {
  const { credentials, channelOptions } = await clientChannelSettings(options);
  return createClient(BackupService, options.server, credentials, channelOptions);
}

/**
 * Runs one client command against `connection.server` and sets the process
 * exit code: the one `body` returns, or the one its error maps to.
 */
export async function runClientCommand(
  connection: ClientConnectionOptions,
  body: (client: BackupClient) => Promise<number>,
): Promise<void> {
  let client: BackupClient | undefined;
  try {
    client = await connect(connection);
    process.exitCode = await body(client);
  } catch (error) {
    const report = reportError(error, connection.server);
    process.stderr.write(`${report.message}\n`);
    process.exitCode = report.exitCode;
  } finally {
    client?.close();
  }
}
