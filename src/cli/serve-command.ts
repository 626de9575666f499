// `vmabackup serve`: runs the daemon in the foreground, logging pino JSON
// lines to stdout, until SIGINT or SIGTERM stops it cleanly (exit 0).
// Transport security (TLS, mutual TLS, bearer tokens) comes from the --tls-*
// and --auth-token-file flags; an address other than loopback is refused
// without them unless --insecure (exit 2, like any bad flag). --metrics-listen
// serves Prometheus metrics over plain HTTP, so on loopback only unless --insecure.
import { mkdir } from "node:fs/promises";
import * as path from "node:path";
import type { Command } from "commander";
import ms from "ms";
import { pino } from "pino";
import type { Logger } from "pino";
import type * as grpc from "@grpc/grpc-js";
import { DaemonMetrics } from "../metrics/daemon-metrics.js";
import { createAuthInterceptor, readTokenFile, TokenFileError } from "../server/auth.js";
import { startServer } from "../server/server.js";
import { StoreVersionError } from "../store/job-store.js";
import { StateDirLockedError } from "../store/state-dir-lock.js";
import { isLoopbackHost, listenHost, listenPolicyViolation, loadServerCredentials, TlsConfigError } from "../server/tls.js";
import type { ServerTlsFiles } from "../server/tls.js";

const DEFAULT_LISTEN = "127.0.0.1:50051";
const DEFAULT_BACKUP_DIR = "./var/backups";
const DEFAULT_SOURCE_ROOT = "./var/images";
const DEFAULT_STATE_DIR = "./var/state";
const DEFAULT_PROGRESS_INTERVAL = "200ms";
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** Exit code for a malformed command line. */
const USAGE_EXIT_CODE = 2;

interface ServeFlags {
  readonly listen: string;
  readonly backupDir: string;
  readonly sourceRoot?: string[];
  readonly stateDir: string;
  readonly progressInterval: string;
  readonly logLevel: string;
  readonly authTokenFile?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tlsClientCa?: string;
  readonly insecure?: boolean;
  readonly metricsListen?: string;
}

/** Who may connect and how, as the flags say. */
interface SecuritySettings {
  /** --auth-token-file: calls need one of its tokens. */
  readonly authTokenFile?: string;
  /** --tls-cert/--tls-key (and --tls-client-ca for mutual TLS). */
  readonly tls?: ServerTlsFiles;
  /** --insecure: serve an address other than loopback without TLS and a token. */
  readonly insecure: boolean;
}

/** What the flags mean once checked: absolute paths, milliseconds. */
interface ServeSettings {
  readonly listen: string;
  readonly backupDir: string;
  readonly sourceRoots: string[];
  readonly stateDir: string;
  readonly progressIntervalMs: number;
  readonly logLevel: string;
  readonly security: SecuritySettings;
  /** --metrics-listen, with the metrics (created here so that auth can count refusals); off when undefined. */
  readonly metrics?: { readonly listen: string; readonly metrics: DaemonMetrics };
}

/** HOST:PORT with an optional bracketed IPv6 host; port 0 picks a free one. */
const LISTEN_PATTERN = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):(\d{1,5})$/;

/** Thrown for flag values that make no sense; reported as a usage error. */
class FlagError extends Error {}

function parseListen(text: string, flag = "--listen", example = DEFAULT_LISTEN): string {
  const match = LISTEN_PATTERN.exec(text);
  if (match === null || Number(match[2]) > 65535) {
    throw new FlagError(`${flag}: expected HOST:PORT (e.g. ${example}), got "${text}"`);
  }
  return text;
}

function parseDuration(flag: string, text: string): number {
  // ms() returns undefined for text it cannot read; it accepts negatives.
  const value = ms(text as ms.StringValue) as number | undefined;
  if (value === undefined || !Number.isFinite(value) || value < 0) {
    throw new FlagError(`${flag}: expected a duration such as 200ms or 1s, got "${text}"`);
  }
  return value;
}

function parseLogLevel(text: string): string {
  if (!LOG_LEVELS.includes(text)) {
    throw new FlagError(`--log-level: expected one of ${LOG_LEVELS.join(", ")}, got "${text}"`);
  }
  return text;
}

function parseSecurity(flags: ServeFlags, listen: string): SecuritySettings {
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) {
    throw new FlagError("--tls-cert and --tls-key go together");
  }
  if (flags.tlsClientCa !== undefined && flags.tlsCert === undefined) {
    throw new FlagError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)");
  }
  const tls: ServerTlsFiles | undefined =
    flags.tlsCert === undefined || flags.tlsKey === undefined
      ? undefined
      : {
          certFile: path.resolve(flags.tlsCert),
          keyFile: path.resolve(flags.tlsKey),
          ...(flags.tlsClientCa === undefined ? {} : { clientCaFile: path.resolve(flags.tlsClientCa) }),
        };
  const security: SecuritySettings = {
    ...(flags.authTokenFile === undefined ? {} : { authTokenFile: path.resolve(flags.authTokenFile) }),
    ...(tls === undefined ? {} : { tls }),
    insecure: flags.insecure === true,
  };
  const violation = listenPolicyViolation(listen, {
    tls: tls !== undefined,
    auth: security.authTokenFile !== undefined,
    insecure: security.insecure,
  });
  if (violation !== undefined) throw new FlagError(violation);
  return security;
}

/** --metrics-listen: the endpoint has neither TLS nor tokens, so loopback only unless --insecure. */
function parseMetrics(text: string, insecure: boolean): NonNullable<ServeSettings["metrics"]> {
  const listen = parseListen(text, "--metrics-listen", "127.0.0.1:9464");
  if (!isLoopbackHost(listenHost(listen)) && !insecure) {
    throw new FlagError(
      `refusing to serve metrics on ${listen}: the metrics endpoint has no TLS or authentication, ` +
        `so it serves loopback only; listen on 127.0.0.1, or pass --insecure to serve it anyway`,
    );
  }
  return { listen, metrics: new DaemonMetrics() };
}

function settingsFrom(flags: ServeFlags): ServeSettings {
  const roots = flags.sourceRoot ?? [DEFAULT_SOURCE_ROOT];
  const listen = parseListen(flags.listen);
  return {
    listen,
    backupDir: path.resolve(flags.backupDir),
    sourceRoots: roots.map((root) => path.resolve(root)),
    stateDir: path.resolve(flags.stateDir),
    progressIntervalMs: parseDuration("--progress-interval", flags.progressInterval),
    logLevel: parseLogLevel(flags.logLevel),
    security: parseSecurity(flags, listen),
    ...(flags.metricsListen === undefined
      ? {}
      : { metrics: parseMetrics(flags.metricsListen, flags.insecure === true) }),
  };
}

/** What startServer needs for the security settings. */
interface TransportSecurity {
  readonly credentials?: grpc.ServerCredentials;
  readonly interceptors: grpc.ServerInterceptor[];
}

/** Loads the token file and TLS files; throws TokenFileError or TlsConfigError. */
async function loadSecurity(settings: ServeSettings, logger: Logger): Promise<TransportSecurity> {
  const { security } = settings;
  const interceptors: grpc.ServerInterceptor[] = [];
  let authTokens = 0;
  if (security.authTokenFile !== undefined) {
    const tokens = await readTokenFile(security.authTokenFile);
    authTokens = tokens.size;
    const onRefusal = settings.metrics?.metrics.countAuthFailure;
    interceptors.push(
      createAuthInterceptor({ tokens, logger: logger.child({ component: "auth" }), ...(onRefusal && { onRefusal }) }),
    );
  }
  const credentials = security.tls === undefined ? undefined : await loadServerCredentials(security.tls);
  logger.info(
    { tls: security.tls !== undefined, mutualTls: security.tls?.clientCaFile !== undefined, authTokens },
    "transport security",
  );
  if (security.insecure && !isLoopbackHost(listenHost(settings.listen)) && (credentials === undefined || authTokens === 0)) {
    logger.warn(
      { listen: settings.listen },
      "--insecure: serving an address other than loopback without TLS and a bearer token",
    );
  }
  return { ...(credentials === undefined ? {} : { credentials }), interceptors };
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

async function serve(settings: ServeSettings, security: TransportSecurity, logger: Logger): Promise<void> {
  for (const dir of [settings.backupDir, settings.stateDir, ...settings.sourceRoots]) {
    await mkdir(dir, { recursive: true });
  }
  const server = await startServer({ ...settings, ...security, logger });

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, "second signal during shutdown; exiting at once");
      process.exit(1);
    }
    stopping = true;
    server.shutdown(signal).then(
      // Exit explicitly: a half-open connection's keepalive timer must not
      // keep a stopped daemon alive.
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

export function registerServeCommand(program: Command): void {
  program
    .command("serve")
    .description("run the backup daemon in the foreground (stop it with SIGINT or SIGTERM)")
    .option("--listen <host:port>", "address to serve gRPC on (port 0 picks a free port)", DEFAULT_LISTEN)
    .option("--backup-dir <dir>", "where archives are written", DEFAULT_BACKUP_DIR)
    .option(
      "--source-root <dir>",
      `directory sources may be read from; repeatable (default: ${DEFAULT_SOURCE_ROOT})`,
      collect,
    )
    .option("--state-dir <dir>", "where the daemon keeps its own state", DEFAULT_STATE_DIR)
    .option(
      "--progress-interval <duration>",
      "minimum time between two progress updates to a watcher",
      DEFAULT_PROGRESS_INTERVAL,
    )
    .option("--log-level <level>", `one of ${LOG_LEVELS.join(", ")}`, "info")
    .option(
      "--auth-token-file <file>",
      "require a bearer token on every RPC except health: one of the tokens in this file, one per line",
    )
    .option("--tls-cert <file>", "serve TLS with this PEM certificate chain (needs --tls-key)")
    .option("--tls-key <file>", "PEM private key of --tls-cert")
    .option("--tls-client-ca <file>", "require client certificates signed by this PEM CA (mutual TLS)")
    .option("--insecure", "allow an address other than loopback without TLS and --auth-token-file")
    .option(
      "--metrics-listen <host:port>",
      "serve Prometheus metrics at http://HOST:PORT/metrics (loopback only unless --insecure; off by default)",
    )
    .action(async (flags: ServeFlags, command: Command) => {
      let settings: ServeSettings;
      try {
        settings = settingsFrom(flags);
      } catch (error) {
        if (!(error instanceof FlagError)) throw error;
        command.error(`error: ${error.message}`, { exitCode: USAGE_EXIT_CODE });
      }
      const logger = pino({ level: settings.logLevel });
      let security: TransportSecurity;
      try {
        security = await loadSecurity(settings, logger);
      } catch (error) {
        if (!(error instanceof TokenFileError || error instanceof TlsConfigError)) throw error;
        command.error(`error: ${error.message}`, { exitCode: USAGE_EXIT_CODE });
      }
      try {
        await serve(settings, security, logger);
      } catch (error) {
        logger.fatal({ err: error }, "cannot start the server");
        // A job database written by a newer vmabackup, or a state dir another
        // server holds, is the operator's to sort out: say so plainly.
        if (error instanceof StoreVersionError || error instanceof StateDirLockedError) {
          process.stderr.write(`error: ${error.message}\n`);
        }
        process.exit(1);
      }
    });
}
