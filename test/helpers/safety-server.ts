// The safety tests' server: test-server.ts's fixture with a captured log
// (debug level by default), and the small helpers the safety tests share.
import { lstat, readdir } from "node:fs/promises";
import * as path from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { expect } from "vitest";
import { BackupState } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import { captureLog } from "./log-capture.js";
import type { CapturedLog } from "./log-capture.js";
import { startTestServer } from "./test-server.js";
import type { BackupClient, TestServer, TestServerOptions } from "./test-server.js";

export type { BackupClient } from "./test-server.js";

export type SafetyServerOptions = Omit<TestServerOptions, "logger" | "prepareStateDir">;

/** A test server whose log is always captured. */
export interface SafetyServer extends TestServer {
  readonly log: CapturedLog;
}

/** startTestServer with a captured log (`options.log`, or a new one at level debug). */
export async function startSafetyServer(options: SafetyServerOptions = {}): Promise<SafetyServer> {
  const log = options.log ?? captureLog();
  const server = await startTestServer({ ...options, log });
  return { ...server, log };
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
