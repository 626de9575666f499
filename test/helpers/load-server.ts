// A vmabackup server in a child process of its own, for the load test: its
// heap is the server's alone (the test's thousand clients live in the
// parent), and it runs with --expose-gc so that it can report its heap
// after a full collection. The parent talks to it over the IPC channel:
//   { type: "stats" } -> { type: "stats", heapUsed, rss, watchers }, after GC
//   { type: "stop" }  -> shuts down and exits 0
// startLoadServer() forks this file.
import { fork } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { startServer } from "../../src/server/server.js";

export interface LoadServerDirs {
  readonly backupDir: string;
  readonly sourceDir: string;
  readonly stateDir: string;
}

export interface ServerStats {
  /** V8 heap in use after full garbage collections, in bytes. */
  readonly heapUsed: number;
  readonly rss: number;
  /** WatchBackup streams open. */
  readonly watchers: number;
}

export interface LoadServer {
  readonly address: string;
  /** Collects garbage in the server process, then reports its memory and watchers. */
  stats(): Promise<ServerStats>;
  stop(): Promise<void>;
}

type Request = { readonly type: "stats"; readonly id: number } | { readonly type: "stop" };
type Reply =
  | { readonly type: "ready"; readonly address: string }
  | ({ readonly type: "stats"; readonly id: number } & ServerStats)
  | { readonly type: "failed"; readonly message: string };

const SELF = fileURLToPath(import.meta.url);

export function startLoadServer(dirs: LoadServerDirs): Promise<LoadServer> {
  const child: ChildProcess = fork(SELF, [JSON.stringify(dirs)], {
    execArgv: ["--expose-gc", "--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  const pending = new Map<number, (stats: ServerStats) => void>();
  let nextId = 0;
  return new Promise((resolve, reject) => {
    child.on("exit", (code) => reject(new Error(`load server exited (${code}) before it was ready`)));
    child.on("message", (reply: Reply) => {
      if (reply.type === "failed") reject(new Error(reply.message));
      if (reply.type === "stats") {
        pending.get(reply.id)?.({ heapUsed: reply.heapUsed, rss: reply.rss, watchers: reply.watchers });
        pending.delete(reply.id);
      }
      if (reply.type !== "ready") return;
      resolve({
        address: reply.address,
        stats() {
          const id = nextId++;
          return new Promise((done) => {
            pending.set(id, done);
            child.send({ type: "stats", id } satisfies Request);
          });
        },
        async stop() {
          if (child.exitCode === null) child.send({ type: "stop" } satisfies Request);
          await exited;
        },
      });
    });
  });
}

/** Full collections until the heap stops shrinking (weak references and finalizers need a few rounds). */
async function collectGarbage(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error("run with --expose-gc");
  let previous = Infinity;
  for (let round = 0; round < 10; round++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
    const used = process.memoryUsage().heapUsed;
    if (used >= previous - 1024) break;
    previous = used;
  }
}

async function main(dirs: LoadServerDirs): Promise<void> {
  const send = (reply: Reply): void => void process.send?.(reply);
  try {
    const server = await startServer({
      listen: "127.0.0.1:0",
      backupDir: dirs.backupDir,
      sourceRoots: [dirs.sourceDir],
      stateDir: dirs.stateDir,
      progressIntervalMs: 50,
      logger: pino({ level: "silent" }),
      shutdownGraceMs: 200,
    });
    process.on("message", (request: Request) => {
      if (request.type === "stop") {
        void server.shutdown("test finished").then(() => process.exit(0));
        return;
      }
      void collectGarbage().then(() => {
        const { heapUsed, rss } = process.memoryUsage();
        send({ type: "stats", id: request.id, heapUsed, rss, watchers: server.watchStreamCount });
      });
    });
    // The parent going away must not leave a server behind.
    process.on("disconnect", () => process.exit(1));
    send({ type: "ready", address: server.address });
  } catch (error) {
    send({ type: "failed", message: String(error) });
    process.exit(1);
  }
}

if (process.argv[1] === SELF) await main(JSON.parse(process.argv[2]!) as LoadServerDirs);
