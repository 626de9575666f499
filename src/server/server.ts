// Assembles the daemon: the job engine, BackupService, health and
// reflection on one grpc-js server, and the order in which it all stops.
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { BackupService, file_vmabackup_v1_backup } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupDriver } from "../drivers/driver.js";
import { vmaDriver } from "../drivers/vma-driver.js";
import { BackupEngine } from "../engine/backup-engine.js";
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
  /** Where the server keeps its own state; must exist. */
  readonly stateDir: string;
  /** Minimum time between two progress updates of one job to a watcher. */
  readonly progressIntervalMs: number;
  readonly logger: Logger;
  /** Archive formats; VMA when not given. */
  readonly drivers?: readonly BackupDriver[];
  /** How long shutdown waits for calls to finish before cutting them off. */
  readonly shutdownGraceMs?: number;
}

export interface RunningServer {
  /** The address actually bound, "host:port". */
  readonly address: string;
  /** WatchBackup streams open right now (for metrics and tests). */
  readonly watchStreamCount: number;
  /**
   * Stops serving: health goes NOT_SERVING, watch streams end with OK,
   * active jobs are cancelled (their partial files removed), then the
   * server closes. Safe to call more than once.
   */
  shutdown(reason: string): Promise<void>;
}

const DEFAULT_SHUTDOWN_GRACE_MS = 1000;

function bind(server: grpc.Server, listen: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (error, port) =>
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

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const logger = options.logger.child({ component: "server" });
  const engine = new BackupEngine({
    backupDir: options.backupDir,
    sourceRoots: options.sourceRoots,
    progressIntervalMs: options.progressIntervalMs,
    drivers: options.drivers ?? [vmaDriver],
    logger: options.logger.child({ component: "engine" }),
  });
  const watchStreams = new WatchStreams();
  const health = new ServerHealth([BackupService.typeName]);
  const server = new grpc.Server(SERVER_CHANNEL_OPTIONS);
  addService(
    server,
    BackupService,
    createBackupService({ engine, watchStreams, logger: options.logger.child({ component: "rpc" }) }),
  );
  health.addToServer(server);
  addReflection(server, [file_vmabackup_v1_backup]);

  let port: number;
  try {
    port = await bind(server, options.listen);
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
      logger.info("stopped");
    })();
    return stopping;
  };
  return {
    address,
    get watchStreamCount() {
      return watchStreams.size;
    },
    shutdown,
  };
}
