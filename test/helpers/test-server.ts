// Starts a real vmabackup server in-process on 127.0.0.1 (a free port) with
// its own temporary source, backup and state directories, an "outside"
// directory next to them that nothing may ever touch, and a client
// connected to it. stop() shuts the server down and removes the directories.
// The options turn the knobs the safety tests need (credentials and
// interceptors, a small message size limit, extra source roots, a captured
// log). useSharedTestServer() does all that for the tests of a file or
// describe block; safety-server.ts starts it with a captured log.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import type { Logger } from "pino";
import { afterAll, afterEach, beforeAll } from "vitest";
import { BackupService } from "../../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../../src/client/grpc-client.js";
import type { ClientOf } from "../../src/client/grpc-client.js";
import { startServer } from "../../src/server/server.js";
import type { RunningServer } from "../../src/server/server.js";
import type { CapturedLog } from "./log-capture.js";

export type BackupClient = ClientOf<typeof BackupService>;

export interface TestServerOptions {
  /** Progress interval of the server; short by default to keep tests fast. */
  readonly progressIntervalMs?: number;
  /** Defaults to `log`'s logger, else a silent one (set VMABACKUP_TEST_LOG=debug to see logs). */
  readonly logger?: Logger;
  /** A captured log the server writes to (see log-capture.ts). */
  readonly log?: CapturedLog;
  /** Source roots besides the server's own sources dir (e.g. "/dev"). */
  readonly extraSourceRoots?: readonly string[];
  readonly credentials?: grpc.ServerCredentials;
  readonly interceptors?: readonly grpc.ServerInterceptor[];
  readonly maxReceiveMessageBytes?: number;
  /** The server's --nbd-allow entries (none by default). */
  readonly nbdAllow?: readonly string[];
  /** The server's --qmp-root directories (none by default). */
  readonly qmpRoots?: readonly string[];
  /** Credentials of the `client` the helper creates (default plaintext). */
  readonly clientCredentials?: grpc.ChannelCredentials;
  readonly clientChannelOptions?: grpc.ChannelOptions;
  /**
   * Called with the state dir (made, still empty) before the server opens
   * it, e.g. to mount a small filesystem there.
   */
  readonly prepareStateDir?: (stateDir: string) => Promise<void>;
}

export interface TestServer {
  /** "127.0.0.1:<port>". */
  readonly address: string;
  readonly client: BackupClient;
  /** The server's only source root. */
  readonly sourceDir: string;
  readonly backupDir: string;
  readonly stateDir: string;
  /** A sibling of the allowed directories; the server must never write here. */
  readonly outsideDir: string;
  /** Holds every directory; removed by stop(). */
  readonly rootDir: string;
  readonly server: RunningServer;
  /** The captured log given in the options, if any. */
  readonly log: CapturedLog | undefined;
  /** Writes a source image into sourceDir and returns its path. */
  writeSource(name: string, data: Uint8Array): Promise<string>;
  /** Another client of this server; closed by stop(). */
  newClient(credentials?: grpc.ChannelCredentials, channelOptions?: grpc.ChannelOptions): BackupClient;
  /** Shuts the server down, closes the clients and removes every directory. Safe to call twice. */
  stop(): Promise<void>;
}

function defaultLogger(): Logger {
  return pino({ level: process.env.VMABACKUP_TEST_LOG ?? "silent" });
}

export async function startTestServer(options: TestServerOptions = {}): Promise<TestServer> {
  const rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-test-"));
  const sourceDir = path.join(rootDir, "sources");
  const backupDir = path.join(rootDir, "backups");
  const stateDir = path.join(rootDir, "state");
  const outsideDir = path.join(rootDir, "outside");
  await Promise.all([sourceDir, backupDir, stateDir, outsideDir].map((dir) => mkdir(dir)));

  let server: RunningServer;
  try {
    await options.prepareStateDir?.(stateDir);
    server = await startServer({
      listen: "127.0.0.1:0",
      backupDir,
      sourceRoots: [sourceDir, ...(options.extraSourceRoots ?? [])],
      stateDir,
      progressIntervalMs: options.progressIntervalMs ?? 50,
      logger: options.logger ?? options.log?.logger ?? defaultLogger(),
      shutdownGraceMs: 200,
      ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
      ...(options.interceptors === undefined ? {} : { interceptors: options.interceptors }),
      ...(options.maxReceiveMessageBytes === undefined
        ? {}
        : { maxReceiveMessageBytes: options.maxReceiveMessageBytes }),
      ...(options.nbdAllow === undefined ? {} : { nbdAllow: options.nbdAllow }),
      ...(options.qmpRoots === undefined ? {} : { qmpRoots: options.qmpRoots }),
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
    sourceDir,
    backupDir,
    stateDir,
    outsideDir,
    rootDir,
    server,
    log: options.log,
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

/** The server of a useSharedTestServer() block and its client. */
export interface SharedTestServer {
  readonly server: TestServer;
  readonly client: BackupClient;
}

/**
 * One server for all the tests of the calling file or describe block:
 * started before the first test (startTestServer with `options`), every job
 * still active cancelled after each test, stopped after the last test. Read
 * the fields inside tests and hooks only.
 */
export function useSharedTestServer(options: TestServerOptions = {}): SharedTestServer {
  let server: TestServer | undefined;
  const startedServer = (): TestServer => {
    if (server === undefined) throw new Error("useSharedTestServer: the server is only there inside tests and hooks");
    return server;
  };

  beforeAll(async () => {
    server = await startTestServer(options);
  });

  afterEach(async () => {
    await startedServer().client.cancelBackup({ uuid: "" });
  });

  afterAll(async () => {
    await server?.stop();
  });

  return {
    get server() {
      return startedServer();
    },
    get client() {
      return startedServer().client;
    },
  };
}

/** A source image of `size` bytes: random data in its first half, zeros after. */
export function halfRandomImage(size: number): Buffer {
  const data = Buffer.alloc(size);
  randomBytes(Math.floor(size / 2)).copy(data, 0);
  return data;
}

/** Writes a source image into `sourceDir` and returns its path. */
export function sourceWriter(sourceDir: string): (name: string, data: Uint8Array) => Promise<string> {
  return async (name, data) => {
    const file = path.join(sourceDir, name);
    await writeFile(file, data);
    return file;
  };
}
