// Assembles the daemon: the job engine, BackupService, health and
// reflection on one grpc-js server, and the order in which it all stops.
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import { file_google_rpc_status } from "../../gen/google/rpc/status_pb.js";
import { BackupService, file_vmabackup_v1_backup } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupDriver } from "../drivers/driver.js";
import { vmaDriver } from "../drivers/vma-driver.js";
import { BackupEngine } from "../engine/backup-engine.js";
import type { DaemonMetrics } from "../metrics/daemon-metrics.js";
import { startMetricsEndpoint } from "../metrics/metrics-endpoint.js";
import type { MetricsEndpoint } from "../metrics/metrics-endpoint.js";
import { createBackupService } from "./backup-service.js";
import { addService } from "./grpc-adapter.js";
import { ServerHealth } from "./health.js";
import { addReflection } from "./reflection.js";
import { SERVER_CHANNEL_OPTIONS } from "./server-options.js";
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
  /** Largest request accepted; larger ones end RESOURCE_EXHAUSTED (default MAX_RECEIVE_MESSAGE_BYTES). */
  readonly maxReceiveMessageBytes?: number;
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
   * Stops serving: health goes NOT_SERVING, watch streams end with OK,
   * active jobs are cancelled (their partial files removed), then the
   * server closes. Safe to call more than once.
   */
  shutdown(reason: string): Promise<void>;
}

const DEFAULT_SHUTDOWN_GRACE_MS = 1000;

function bind(server: grpc.Server, listen: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, credentials, (error, port) =>
      error ? reject(error) : resolve(port),
    );
  });
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
    // The metrics interceptor goes first, so it also counts what the others refuse.
    interceptors: [...(metrics === undefined ? [] : [metrics.rpcInterceptor]), ...(options.interceptors ?? [])],
  });
  addService(
    server,
    BackupService,
    createBackupService({ engine, watchStreams, logger: options.logger.child({ component: "rpc" }) }),
  );
  health.addToServer(server);
  // The google.rpc files let reflection clients (grpcurl) decode the error
  // details every failure carries.
  addReflection(server, [file_vmabackup_v1_backup, file_google_rpc_status, file_google_rpc_error_details]);

  let port: number;
  let metricsEndpoint: MetricsEndpoint | undefined;
  try {
    port = await bind(server, options.listen, options.credentials ?? grpc.ServerCredentials.createInsecure());
    if (options.metrics !== undefined) {
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
      backupDir: options.backupDir,
      sourceRoots: options.sourceRoots,
      stateDir: options.stateDir,
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
