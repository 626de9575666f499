// Assembles the daemon: the job engine, BackupService, health and
// reflection on one grpc-js server, and the order in which it all stops.
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { BackupService } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupDriver } from "../drivers/driver.js";
import { vmaDriver } from "../drivers/vma-driver.js";
import { BackupEngine } from "../engine/index.js";
import type { S3ClientOptions, TargetSpec } from "../engine/index.js";
import type { DaemonMetrics } from "../metrics/daemon-metrics.js";
import type { MetricsEndpoint } from "../metrics/metrics-endpoint.js";
import { createBackupService } from "./backup-service.js";
import { addService } from "./grpc-adapter.js";
import { ServerHealth } from "./health.js";
import { addReflection } from "./reflection.js";
import { joinHostPort, listenPort } from "./listen-policy.js";
import { createRequestReadGate } from "./request-read-gate.js";
import type { RequestReadGateOptions } from "./request-read-gate.js";
import { REQUEST_READ_LIMITS, SERVER_CHANNEL_OPTIONS } from "./server-options.js";
import { routeUnknownMethodsThroughInterceptors } from "./unknown-methods.js";
import { WatchStreams } from "./watch-streams.js";

export interface ServerOptions {
  /** "host:port" to listen on; port 0 picks a free port. */
  readonly listen: string;
  /** Where archives are written; must exist. */
  readonly backupDir: string;
  /** Directories sources may be read from. */
  readonly sourceRoots: readonly string[];
  /** Where the server keeps its own state (the job database); created when missing. */
  readonly stateDir: string;
  /** Where nbd sources may connect (socket directories, "host[:port]"); none when empty or not given. */
  readonly nbdAllow?: readonly string[];
  /** Directories of the QMP sockets qemu sources may use; none when empty or not given. */
  readonly qmpRoots?: readonly string[];
  /** Scratch overlays of qemu sources (default `${stateDir}/scratch`). */
  readonly scratchDir?: string;
  /** S3 targets besides the backup dir ("local"): --target NAME=s3://bucket/prefix. */
  readonly targets?: readonly TargetSpec[];
  /** How to reach S3 (--s3-*). */
  readonly s3?: S3ClientOptions;
  /** Minimum time between two progress updates of one job to a watcher. */
  readonly progressIntervalMs: number;
  readonly logger: Logger;
  /** Archive formats; VMA when not given. */
  readonly drivers?: readonly BackupDriver[];
  /** How long shutdown waits for calls to finish before cutting them off. */
  readonly shutdownGraceMs?: number;
  /** Transport security (see tls.ts); plaintext when not given. */
  readonly credentials?: grpc.ServerCredentials;
  /** Run on every call before its handler, e.g. the bearer-token check of auth.ts. */
  readonly interceptors?: readonly grpc.ServerInterceptor[];
  /**
   * The IP addresses to bind, on `listen`'s port: those its host resolved to
   * when the listen policy judged them (see listen-policy.ts). When not
   * given, grpc-js resolves `listen` itself.
   */
  readonly listenAddresses?: readonly string[];
  /** Largest request accepted; larger ones end RESOURCE_EXHAUSTED (default MAX_RECEIVE_MESSAGE_BYTES). */
  readonly maxReceiveMessageBytes?: number;
  /** How many requests are read into memory at once (default REQUEST_READ_LIMITS). */
  readonly requestReads?: RequestReadGateOptions;
  /** Prometheus metrics at http://`listen`/metrics (see src/metrics/); none when not given. */
  readonly metrics?: { readonly listen: string; readonly metrics: DaemonMetrics };
}

export interface RunningServer {
  /** The address actually bound, "host:port". */
  readonly address: string;
  /** The address the metrics endpoint bound, when serving one. */
  readonly metricsAddress?: string;
  /** WatchBackup streams open right now (for metrics and tests). */
  readonly watchStreamCount: number;
  /**
   * Messages written to watch streams and not yet handed to HTTP/2; stays
   * near 16 per stream however slowly watchers read (for metrics and tests).
   */
  readonly watchBufferedMessages: number;
  /**
   * Stops serving: health goes NOT_SERVING, watch streams end with
   * UNAVAILABLE (after the CANCELLED of their jobs),
   * active jobs are cancelled (their partial files removed), then the
   * server closes. Safe to call more than once.
   */
  shutdown(reason: string): Promise<void>;
}

const DEFAULT_SHUTDOWN_GRACE_MS = 1000;

function bind(server: grpc.Server, listen: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, credentials, (error, port) => (error ? reject(error) : resolve(port)));
  });
}

/**
 * Binds the addresses of `addresses` on `listen`'s port (port 0: the one
 * the first bind picked). Like grpc-js for a name with several addresses,
 * it serves those that bind (e.g. 127.0.0.1 when ::1 is disabled) and
 * fails only when none does.
 */
async function bindAddresses(
  server: grpc.Server,
  listen: string,
  addresses: readonly string[],
  credentials: grpc.ServerCredentials,
  logger: Logger,
): Promise<number> {
  let port = listenPort(listen);
  let bound = false;
  let firstError: unknown;
  for (const address of addresses) {
    try {
      port = await bind(server, joinHostPort(address, port), credentials);
      bound = true;
    } catch (error) {
      firstError ??= error;
      logger.warn({ address, err: error }, "cannot bind one of the listen addresses");
    }
  }
  if (!bound) throw firstError;
  return port;
}

/** `listen` with its port replaced by the one bound (which differs for port 0). */
function boundAddress(listen: string, port: number): string {
  const colon = listen.lastIndexOf(":");
  return `${colon < 0 ? listen : listen.slice(0, colon)}:${port}`;
}

/** tryShutdown waits for every open call; force the rest after `graceMs`. */
function closeServer(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Opens the engine on `stateDir` and serves it. Rejects when the state dir
 * cannot be used (e.g. StoreVersionError from src/store/job-store.ts) or
 * the address cannot be bound; nothing is left running then.
 */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const logger = options.logger.child({ component: "server" });
  // Opens the job store and settles jobs a previous run left ACTIVE; throws
  // StoreVersionError for a database written by a newer vmabackup.
  const engine = await BackupEngine.open({
    backupDir: options.backupDir,
    sourceRoots: options.sourceRoots,
    stateDir: options.stateDir,
    ...(options.nbdAllow === undefined ? {} : { nbdAllow: options.nbdAllow }),
    ...(options.qmpRoots === undefined ? {} : { qmpRoots: options.qmpRoots }),
    ...(options.scratchDir === undefined ? {} : { scratchDir: options.scratchDir }),
    ...(options.targets === undefined ? {} : { targets: options.targets }),
    ...(options.s3 === undefined ? {} : { s3: options.s3 }),
    progressIntervalMs: options.progressIntervalMs,
    drivers: options.drivers ?? [vmaDriver],
    logger: options.logger.child({ component: "engine" }),
  });
  const watchStreams = new WatchStreams();
  const health = new ServerHealth([BackupService.typeName]);
  const metrics = options.metrics?.metrics;
  if (metrics !== undefined) {
    // Subscribed before serving, so no job escapes the counts.
    metrics.countWatchersWith(() => watchStreams.size);
    metrics.followJobs(engine.watch()).catch((error: unknown) => logger.error({ err: error }, "job metrics failed"));
  }
  const server = new grpc.Server({
    ...SERVER_CHANNEL_OPTIONS,
    ...(options.maxReceiveMessageBytes === undefined
      ? {}
      : { "grpc.max_receive_message_length": options.maxReceiveMessageBytes }),
    // The metrics interceptor first, so it also counts what the others refuse;
    // the read gate last, so outermost: a call reaches it only once the
    // interceptors before it (auth) have let its metadata through.
    interceptors: [
      ...(metrics === undefined ? [] : [metrics.rpcInterceptor]),
      ...(options.interceptors ?? []),
      createRequestReadGate(options.requestReads ?? REQUEST_READ_LIMITS).interceptor,
    ],
  });
  // Without a token, an unknown method must answer like a known one.
  const isKnownMethod = routeUnknownMethodsThroughInterceptors(server);
  metrics?.knowMethodsBy(isKnownMethod);
  addService(
    server,
    BackupService,
    createBackupService({ engine, watchStreams, logger: options.logger.child({ component: "rpc" }) }),
  );
  health.addToServer(server);
  // Describes our API, health, reflection and the google.rpc error details
  // every failure carries (so that grpcurl can decode them).
  addReflection(server);

  let port: number;
  let metricsEndpoint: MetricsEndpoint | undefined;
  try {
    const credentials = options.credentials ?? grpc.ServerCredentials.createInsecure();
    port =
      options.listenAddresses === undefined
        ? await bind(server, options.listen, credentials)
        : await bindAddresses(server, options.listen, options.listenAddresses, credentials, logger);
    if (options.metrics !== undefined) {
      // Loaded only when asked for: importing node:http loads Node's fetch (undici), ~5 MiB.
      const { startMetricsEndpoint } = await import("../metrics/metrics-endpoint.js");
      metricsEndpoint = await startMetricsEndpoint(options.metrics.listen, options.metrics.metrics.registry);
    }
  } catch (error) {
    server.forceShutdown();
    await engine.shutdown();
    throw error;
  }
  const address = boundAddress(options.listen, port);
  logger.info(
    {
      address,
      ...(options.listenAddresses === undefined ? {} : { addresses: options.listenAddresses }),
      backupDir: options.backupDir,
      sourceRoots: options.sourceRoots,
      stateDir: options.stateDir,
      nbdAllow: options.nbdAllow ?? [],
      qmpRoots: options.qmpRoots ?? [],
      progressIntervalMs: options.progressIntervalMs,
      ...(metricsEndpoint === undefined ? {} : { metricsAddress: metricsEndpoint.address }),
    },
    "listening",
  );

  let stopping: Promise<void> | undefined;
  const shutdown = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      logger.info({ reason, watchers: watchStreams.size }, "shutting down");
      health.setServing(false);
      // Cancel jobs first so that their watchers see CANCELLED before their
      // streams end; then end whatever still follows (all-jobs watchers).
      await engine.shutdown();
      watchStreams.endAll();
      await closeServer(server, options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS);
      await metricsEndpoint?.close();
      logger.info("stopped");
    })();
    return stopping;
  };
  return {
    address,
    ...(metricsEndpoint === undefined ? {} : { metricsAddress: metricsEndpoint.address }),
    get watchStreamCount() {
      return watchStreams.size;
    },
    get watchBufferedMessages() {
      return watchStreams.bufferedMessages;
    },
    shutdown,
  };
}
