// `vmabackup serve`: runs the daemon in the foreground, logging pino JSON
// lines to stdout, until SIGINT or SIGTERM stops it cleanly (exit 0).
// SIGHUP and SIGUSR1 are logged and ignored (see daemon-signals.ts).
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
import { parseTarget, type S3ClientOptions, TargetConfigError, type TargetSpec } from "../engine/index.js";
import type { DaemonMetrics } from "../metrics/daemon-metrics.js";
import { createAuthInterceptor, readTokenFile, TokenFileError } from "../server/auth.js";
import { startServer } from "../server/server.js";
import {
  isLoopbackAddress,
  joinHostPort,
  ListenResolveError,
  listenPolicyViolation,
  listenPort,
  resolveListenHost,
} from "../server/listen-policy.js";
import { loadServerCredentials, TlsConfigError } from "../server/tls.js";
import type { ServerTlsFiles } from "../server/tls.js";
import { installDaemonSignals, logDaemonSignalsTo } from "./daemon-signals.js";
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE } from "./exit-codes.js";
import { startupProblem } from "./startup-problem.js";

const DEFAULT_LISTEN = "127.0.0.1:50051";
const DEFAULT_BACKUP_DIR = "./var/backups";
const DEFAULT_SOURCE_ROOT = "./var/images";
const DEFAULT_STATE_DIR = "./var/state";
const DEFAULT_PROGRESS_INTERVAL = "200ms";
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** Exit code for a malformed command line. */

interface ServeFlags {
  readonly listen: string;
  readonly backupDir: string;
  readonly sourceRoot?: string[];
  readonly nbdAllow?: string[];
  readonly qmpRoot?: string[];
  readonly scratchDir?: string;
  readonly stateDir: string;
  readonly progressInterval: string;
  readonly logLevel: string;
  readonly authTokenFile?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tlsClientCa?: string;
  readonly insecure?: boolean;
  readonly metricsListen?: string;
  readonly target?: string[];
  readonly s3Endpoint?: string;
  readonly s3Region?: string;
  readonly s3Credentials?: string;
  readonly s3Profile?: string;
  readonly s3PathStyle?: boolean;
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
  /** --nbd-allow: unix-socket directories (absolute) and host[:port] entries. */
  readonly nbdAllow: string[];
  /** --qmp-root: directories of allowed QMP sockets. */
  readonly qmpRoots: string[];
  /** --scratch-dir, absolute; default under the state dir. */
  readonly scratchDir?: string;
  /** --target NAME=s3://bucket/prefix, besides the backup dir ("local"). */
  readonly targets: TargetSpec[];
  /** --s3-*: how to reach S3. */
  readonly s3: S3ClientOptions;
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

/** HOST or HOST:PORT of --nbd-allow, with an optional bracketed IPv6 host. */
const NBD_HOST_PATTERN = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+)(:\d{1,5})?$/;

/** An --nbd-allow entry: a socket directory (made absolute) or HOST[:PORT]. */
function parseNbdAllow(text: string): string {
  if (text.startsWith("/") || text.startsWith(".")) return path.resolve(text);
  const match = NBD_HOST_PATTERN.exec(text);
  if (match === null || Number((match[2] ?? ":0").slice(1)) > 65535) {
    throw new FlagError(
      `--nbd-allow: expected a socket directory (e.g. /run/vmabackup/nbd) or HOST[:PORT] (e.g. 127.0.0.1:10809), got "${text}"`,
    );
  }
  return text;
}

function parseLogLevel(text: string): string {
  if (!LOG_LEVELS.includes(text)) {
    throw new FlagError(`--log-level: expected one of ${LOG_LEVELS.join(", ")}, got "${text}"`);
  }
  return text;
}

function parseSecurity(flags: ServeFlags): SecuritySettings {
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
  return {
    ...(flags.authTokenFile === undefined ? {} : { authTokenFile: path.resolve(flags.authTokenFile) }),
    ...(tls === undefined ? {} : { tls }),
    insecure: flags.insecure === true,
  };
}

/**
 * The addresses --listen resolves to, once the listen policy allows them
 * (judged on the addresses, never the name). Throws FlagError.
 */
async function listenAddresses(settings: ServeSettings): Promise<string[]> {
  let addresses: string[];
  try {
    addresses = await resolveListenHost(settings.listen);
  } catch (error) {
    if (error instanceof ListenResolveError) throw new FlagError(error.message);
    throw error;
  }
  const { security } = settings;
  const violation = listenPolicyViolation(settings.listen, addresses, {
    tls: security.tls !== undefined,
    auth: security.authTokenFile !== undefined,
    insecure: security.insecure,
  });
  if (violation !== undefined) throw new FlagError(violation);
  return addresses;
}

/**
 * --metrics-listen as the address to bind: the endpoint has neither TLS nor
 * tokens, so every address its host resolves to must be loopback unless
 * --insecure (judged on addresses, like --listen). Throws FlagError.
 */
async function metricsAddress(listen: string, insecure: boolean): Promise<string> {
  let addresses: string[];
  try {
    addresses = await resolveListenHost(listen);
  } catch (error) {
    if (error instanceof ListenResolveError) throw new FlagError(error.message.replace("--listen", "--metrics-listen"));
    throw error;
  }
  if (!addresses.every(isLoopbackAddress) && !insecure) {
    throw new FlagError(
      `refusing to serve metrics on ${listen}: the metrics endpoint has no TLS or authentication, ` +
        `so it serves loopback only; listen on 127.0.0.1, or pass --insecure to serve it anyway`,
    );
  }
  return joinHostPort(addresses[0] as string, listenPort(listen));
}

/** --target NAME=s3://bucket/prefix; a usage error saying what to fix otherwise. */
function parseTargetFlag(text: string): TargetSpec {
  try {
    return parseTarget(text);
  } catch (error) {
    if (error instanceof TargetConfigError) throw new FlagError(error.message);
    throw error;
  }
}

function settingsFrom(flags: ServeFlags, Metrics: typeof DaemonMetrics | undefined): ServeSettings {
  const roots = flags.sourceRoot ?? [DEFAULT_SOURCE_ROOT];
  const listen = parseListen(flags.listen);
  return {
    listen,
    backupDir: path.resolve(flags.backupDir),
    sourceRoots: roots.map((root) => path.resolve(root)),
    stateDir: path.resolve(flags.stateDir),
    nbdAllow: (flags.nbdAllow ?? []).map(parseNbdAllow),
    qmpRoots: (flags.qmpRoot ?? []).map((root) => path.resolve(root)),
    ...(flags.scratchDir === undefined ? {} : { scratchDir: path.resolve(flags.scratchDir) }),
    targets: (flags.target ?? []).map(parseTargetFlag),
    s3: {
      ...(flags.s3Endpoint === undefined ? {} : { endpoint: flags.s3Endpoint }),
      ...(flags.s3Region === undefined ? {} : { region: flags.s3Region }),
      ...(flags.s3Credentials === undefined ? {} : { credentialsFile: path.resolve(flags.s3Credentials) }),
      ...(flags.s3Profile === undefined ? {} : { profile: flags.s3Profile }),
      ...(flags.s3PathStyle === true ? { forcePathStyle: true } : {}),
    },
    progressIntervalMs: parseDuration("--progress-interval", flags.progressInterval),
    logLevel: parseLogLevel(flags.logLevel),
    security: parseSecurity(flags),
    ...(flags.metricsListen === undefined || Metrics === undefined
      ? {}
      : {
          metrics: {
            listen: parseListen(flags.metricsListen, "--metrics-listen", "127.0.0.1:9464"),
            metrics: new Metrics(),
          },
        }),
  };
}

/** What startServer needs for the security settings. */
interface TransportSecurity {
  readonly credentials?: grpc.ServerCredentials;
  readonly interceptors: grpc.ServerInterceptor[];
}

/** Loads the token file and TLS files; throws TokenFileError or TlsConfigError. */
async function loadSecurity(
  settings: ServeSettings,
  addresses: readonly string[],
  logger: Logger,
): Promise<TransportSecurity> {
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
  if (security.insecure && !addresses.every(isLoopbackAddress) && (credentials === undefined || authTokens === 0)) {
    logger.warn(
      { listen: settings.listen, addresses },
      "--insecure: serving an address other than loopback without TLS and a bearer token",
    );
  }
  return { ...(credentials === undefined ? {} : { credentials }), interceptors };
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

async function serve(
  settings: ServeSettings,
  addresses: readonly string[],
  security: TransportSecurity,
  logger: Logger,
): Promise<void> {
  for (const dir of [settings.backupDir, settings.stateDir, ...settings.sourceRoots]) {
    await mkdir(dir, { recursive: true });
  }
  // Bind the addresses the policy judged, not the name again.
  const server = await startServer({ ...settings, ...security, listenAddresses: addresses, logger });

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, "second signal during shutdown; exiting at once");
      process.exit(EXIT_FAILURE);
    }
    stopping = true;
    server.shutdown(signal).then(
      // Exit explicitly: a half-open connection's keepalive timer must not
      // keep a stopped daemon alive.
      () => process.exit(EXIT_OK),
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(EXIT_FAILURE);
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
      "--nbd-allow <dir|host[:port]>",
      "allow nbd sources on unix sockets in this directory or on this TCP host (any port unless given); " +
        "repeatable (default: nbd sources are refused)",
      collect,
    )
    .option(
      "--qmp-root <dir>",
      "allow qemu sources whose QMP socket lies in this directory; repeatable (default: qemu sources are refused)",
      collect,
    )
    .option("--scratch-dir <dir>", "where qemu sources keep their scratch overlays (default: STATE_DIR/scratch)")
    .option(
      "--target <name=s3://bucket/prefix>",
      'an S3 store clients may pick by NAME (Backup target); repeatable. The backup dir is always the target "local"',
      collect,
    )
    .option("--s3-endpoint <url>", "S3 endpoint of every --target, e.g. http://127.0.0.1:9000 (default: AWS)")
    .option("--s3-region <region>", "S3 region (default: AWS_REGION, else us-east-1)")
    .option(
      "--s3-credentials <file>",
      "AWS shared-credentials file to take the S3 keys from (default: the standard AWS environment/profile chain)",
    )
    .option("--s3-profile <name>", "profile to read from the credentials (default: AWS_PROFILE, else default)")
    .option("--s3-path-style", "address buckets in the path (http://host/bucket/key), as Ceph RGW and MinIO need")
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
      let addresses: string[];
      try {
        // prom-client and node:http load only with --metrics-listen (daemon memory).
        const Metrics =
          flags.metricsListen === undefined ? undefined : (await import("../metrics/daemon-metrics.js")).DaemonMetrics;
        settings = settingsFrom(flags, Metrics);
        addresses = await listenAddresses(settings);
        if (settings.metrics !== undefined) {
          const listen = await metricsAddress(settings.metrics.listen, settings.security.insecure);
          settings = { ...settings, metrics: { ...settings.metrics, listen } };
        }
      } catch (error) {
        if (!(error instanceof FlagError)) throw error;
        command.error(`error: ${error.message}`, { exitCode: EXIT_USAGE });
      }
      const logger = pino({ level: settings.logLevel });
      installDaemonSignals();
      logDaemonSignalsTo(logger);
      let security: TransportSecurity;
      try {
        security = await loadSecurity(settings, addresses, logger);
      } catch (error) {
        if (!(error instanceof TokenFileError || error instanceof TlsConfigError)) throw error;
        command.error(`error: ${error.message}`, { exitCode: EXIT_USAGE });
      }
      try {
        await serve(settings, addresses, security, logger);
      } catch (error) {
        logger.fatal({ err: error }, "cannot start the server");
        // The log line has the stack; the operator gets one line saying what to fix.
        process.stderr.write(`error: ${startupProblem(error, settings)}\n`);
        process.exit(EXIT_FAILURE);
      }
    });
}
