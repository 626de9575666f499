// A real in-process vmabackup server for the safety tests, like
// test-server.ts but with the knobs those tests turn: credentials and
// interceptors, a small message size limit, extra source roots, a captured
// log, and an "outside" directory next to the allowed ones that nothing may
// ever touch. Also the small helpers the safety tests share.
import { lstat, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { expect } from "vitest";
import { BackupService, BackupState } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../../src/client/grpc-client.js";
import type { ClientOf } from "../../src/client/grpc-client.js";
import { startServer } from "../../src/server/server.js";
import type { RunningServer } from "../../src/server/server.js";
import { captureLog } from "./log-capture.js";
import type { CapturedLog } from "./log-capture.js";
import { sourceWriter } from "./test-server.js";

export type BackupClient = ClientOf<typeof BackupService>;

export interface SafetyServerOptions {
  readonly progressIntervalMs?: number;
  /** Source roots besides the server's own sources dir (e.g. "/dev"). */
  readonly extraSourceRoots?: readonly string[];
  readonly credentials?: grpc.ServerCredentials;
  readonly interceptors?: readonly grpc.ServerInterceptor[];
  readonly maxReceiveMessageBytes?: number;
  /** Credentials of the `client` the helper creates (default plaintext). */
  readonly clientCredentials?: grpc.ChannelCredentials;
  readonly clientChannelOptions?: grpc.ChannelOptions;
  /** The captured log to use (default: a new one at level debug). */
  readonly log?: CapturedLog;
}

export interface SafetyServer {
  /** "127.0.0.1:<port>". */
  readonly address: string;
  readonly client: BackupClient;
  readonly server: RunningServer;
  readonly log: CapturedLog;
  /** Holds everything below; removed by stop(). */
  readonly rootDir: string;
  readonly sourceDir: string;
  readonly backupDir: string;
  readonly stateDir: string;
  /** A sibling of the allowed directories; the server must never write here. */
  readonly outsideDir: string;
  writeSource(name: string, data: Uint8Array): Promise<string>;
  /** Another client of this server; closed by stop(). */
  newClient(credentials?: grpc.ChannelCredentials, channelOptions?: grpc.ChannelOptions): BackupClient;
  /** Shuts the server down, closes the clients and removes every directory. Safe to call twice. */
  stop(): Promise<void>;
}

export async function startSafetyServer(options: SafetyServerOptions = {}): Promise<SafetyServer> {
  const rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-safety-"));
  const sourceDir = path.join(rootDir, "sources");
  const backupDir = path.join(rootDir, "backups");
  const stateDir = path.join(rootDir, "state");
  const outsideDir = path.join(rootDir, "outside");
  await Promise.all([sourceDir, backupDir, stateDir, outsideDir].map((dir) => mkdir(dir)));
  const log = options.log ?? captureLog();

  let server: RunningServer;
  try {
    server = await startServer({
      listen: "127.0.0.1:0",
      backupDir,
      sourceRoots: [sourceDir, ...(options.extraSourceRoots ?? [])],
      stateDir,
      progressIntervalMs: options.progressIntervalMs ?? 50,
      logger: log.logger,
      shutdownGraceMs: 200,
      ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
      ...(options.interceptors === undefined ? {} : { interceptors: options.interceptors }),
      ...(options.maxReceiveMessageBytes === undefined
        ? {}
        : { maxReceiveMessageBytes: options.maxReceiveMessageBytes }),
    });
  } catch (error) {
    await rm(rootDir, { recursive: true, force: true });
    throw error;
  }
  const clients: BackupClient[] = [];
  const newClient = (
    credentials = options.clientCredentials,
    channelOptions = options.clientChannelOptions,
  ): BackupClient => {
    const client = createClient(BackupService, server.address, credentials, channelOptions);
    clients.push(client);
    return client;
  };
  const client = newClient();

  let stopped: Promise<void> | undefined;
  return {
    address: server.address,
    client,
    server,
    log,
    rootDir,
    sourceDir,
    backupDir,
    stateDir,
    outsideDir,
    writeSource: sourceWriter(sourceDir),
    newClient,
    stop() {
      stopped ??= (async () => {
        for (const each of clients) each.close();
        await server.shutdown("test finished");
        await rm(rootDir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}

/** The gRPC status code a call failed with (the test fails when it succeeded or threw something else). */
export async function statusCodeOf(call: Promise<unknown>): Promise<grpc.status> {
  const error = await call.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error, "the call was expected to fail").toBeInstanceOf(Error);
  const code = (error as Partial<grpc.ServiceError>).code;
  expect(typeof code, `not a gRPC error: ${String(error)}`).toBe("number");
  return code as grpc.status;
}

/** The error a call failed with, or undefined when it succeeded. */
export async function rpcErrorOf(call: Promise<unknown>): Promise<grpc.ServiceError | undefined> {
  return call.then(
    () => undefined,
    (error: unknown) => error as grpc.ServiceError,
  );
}

/** Every status of job `uuid` from a WatchBackup stream, to its terminal status. */
export async function watchToEnd(client: BackupClient, uuid: string): Promise<BackupStatus[]> {
  const statuses: BackupStatus[] = [];
  for await (const message of client.watchBackup({ uuid })) {
    if (message.status !== undefined) statuses.push(message.status);
  }
  return statuses;
}

/** The terminal status of job `uuid`. */
export async function waitForEnd(client: BackupClient, uuid: string): Promise<BackupStatus> {
  const statuses = await watchToEnd(client, uuid);
  const last = statuses.at(-1);
  expect(last, `no status for job ${uuid}`).toBeDefined();
  expect(last!.state).not.toBe(BackupState.ACTIVE);
  return last!;
}

/** Resolves once job `uuid` reported at least `bytes` transferred (and is still active). */
export async function waitForProgress(client: BackupClient, uuid: string, bytes: number): Promise<BackupStatus> {
  for await (const message of client.watchBackup({ uuid })) {
    const status = message.status!;
    if (status.state !== BackupState.ACTIVE) {
      throw new Error(`job ${uuid} ended (${BackupState[status.state]}) before ${bytes} bytes`);
    }
    if (Number(status.transferredBytes) >= bytes) return status;
  }
  throw new Error(`job ${uuid}: the watch ended without a terminal status`);
}

/**
 * A listing of everything below `dir`: relative path, type, size and
 * modification time, so that any write, creation or removal shows.
 */
export async function snapshotTree(dir: string): Promise<string[]> {
  const entries: string[] = [];
  const visit = async (current: string): Promise<void> => {
    for (const name of (await readdir(current)).sort()) {
      const full = path.join(current, name);
      const stats = await lstat(full);
      const kind = stats.isDirectory() ? "d" : stats.isSymbolicLink() ? "l" : stats.isFile() ? "f" : "o";
      entries.push(`${kind} ${path.relative(dir, full)} ${stats.size} ${stats.mtimeMs}`);
      if (stats.isDirectory()) await visit(full);
    }
  };
  await visit(dir);
  return entries;
}

export const KiB = 1024;
export const MiB = 1024 * KiB;
