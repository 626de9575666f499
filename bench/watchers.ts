// Watchers in `npm run bench` (alone: `npm run bench:watchers`): one daemon
// holds more and more idle WatchBackup streams of one active job (100, 1,000,
// 5,000, 10,000 by default), opened by child processes as plain HTTP/2
// streams so that the daemon is measured alone. At each step: the daemon's
// RSS, then one speed change (SetBackupSpeed) shown apart and
// BENCH_WATCH_ROUNDS more whose percentiles are reported, each timed from
// the call until every watcher received the status carrying it.
// Progress updates are switched off (--progress-interval 1h): the streams
// are idle but for the changes. BENCH_WATCH_ROUND_LOG=1 prints each change
// (the p99 of a few rounds is set by their slowest one).
import { fork, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { ClientCommand, ClientReply } from "./watch-clients.js";
import { DAEMON_NODE_OPTIONS, startBenchService } from "./service.js";
import { formatMiB } from "./stats.js";
import { timeCommand } from "./time-command.js";

const MiB = 2 ** 20;
const CLIENT_PROCESSES = 2;

export interface WatchersBenchOptions {
  /** Watcher counts to measure at, increasing. */
  readonly levels: readonly number[];
  /** Speed changes timed at each level. */
  readonly rounds: number;
}

export interface WatchersLevel {
  readonly watchers: number;
  /** Daemon RSS with the watchers open, bytes. */
  readonly rss: number;
  /** When the last watcher had the first change after the streams were opened. */
  readonly firstMaxMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** Deliveries that did not arrive within the timeout. */
  readonly missing: number;
}

export interface WatchersResult {
  readonly levels: readonly WatchersLevel[];
  /** The daemon's peak RSS over the whole benchmark (opening, changes, closing), bytes. */
  readonly peakRss: number;
}

/** Runs the watcher benchmark and prints its table; returns the figures. */
export async function benchWatchers(options: WatchersBenchOptions): Promise<WatchersResult> {
  const root = await mkdtemp(join(tmpdir(), "vmabackup-bench-watch-"));
  const [images, backups, state] = ["images", "backups", "state"].map((name) => join(root, name)) as [
    string,
    string,
    string,
  ];
  await Promise.all([images, backups, state].map((dir) => mkdir(dir)));
  // A sparse image read at 1 MiB/s: the job stays active for the whole benchmark.
  const image = join(images, "disk.raw");
  const file = await open(image, "wx");
  await file.truncate(4096 * MiB);
  await file.close();

  // Gigabytes written by an earlier benchmark may still be in writeback,
  // whose kernel threads would take CPU from the deliveries timed here.
  await timeCommand("sync", []);
  const service = await startBenchService({
    backupDir: backups,
    sourceRoot: images,
    stateDir: state,
    extraArgs: ["--progress-interval", "1h"],
    // E.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the daemon.
    nodeOptions: [...DAEMON_NODE_OPTIONS, ...(process.env.BENCH_DAEMON_NODE_OPTIONS?.split(" ").filter(Boolean) ?? [])],
  });
  const clients = Array.from({ length: CLIENT_PROCESSES }, () => startClient());
  const results: WatchersLevel[] = [];
  let peakRss = 0;
  try {
    const { status } = await service.client.backup({
      backupFile: "watched.vma",
      devices: [{ name: "drive-scsi0", path: image }],
      speedLimit: BigInt(MiB),
    });
    if (status === undefined) throw new Error("Backup returned no status");
    const uuid = status.uuid;
    let open = 0;
    let speed = MiB;
    /** Changes the speed once; the delivery time of each watcher, in ms. */
    const timeChange = async (): Promise<{ latencies: number[]; missing: number }> => {
      speed += 1;
      const sent = process.hrtime.bigint();
      await service.client.setBackupSpeed({ uuid, speedLimit: BigInt(speed) });
      const answered = process.hrtime.bigint();
      // Every client first waits for data on all its streams, then decodes.
      await Promise.all(clients.map((client) => client.ask({ type: "arrived", timeoutMs: 10_000 })));
      const replies = await Promise.all(
        clients.map((client) => client.ask({ type: "receipts", speedLimit: speed, timeoutMs: 10_000 })),
      );
      const latencies: number[] = [];
      let missing = 0;
      for (const reply of replies) {
        if (reply.type !== "receipts") continue;
        missing += reply.missing;
        for (const at of reply.nanoseconds) latencies.push(Number(BigInt(at) - sent) / 1e6);
      }
      if (process.env.BENCH_WATCH_ROUND_LOG === "1") {
        const sorted = [...latencies].sort((a, b) => a - b);
        console.log(
          `    ${open} watchers: SetBackupSpeed answered in ${(Number(answered - sent) / 1e6).toFixed(1)} ms, ` +
            `first delivery ${sorted[0]?.toFixed(1)} ms, last ${sorted.at(-1)?.toFixed(1)} ms`,
        );
      }
      await new Promise((done) => setTimeout(done, 100));
      return { latencies, missing };
    };
    for (const watchers of options.levels) {
      const more = watchers - open;
      await Promise.all(
        clients.map((client, index) => {
          const share = Math.floor(more / clients.length) + (index < more % clients.length ? 1 : 0);
          return client.ask({ type: "open", address: service.address, uuid, count: share });
        }),
      );
      open = watchers;
      await new Promise((done) => setTimeout(done, 1000));
      const rss = await service.rss();
      // The first change after streams were opened also pays for the
      // opening's garbage and for code V8 compiled for it (deoptimized,
      // then optimized again): reported apart, not a sample of the rounds.
      const first = await timeChange();
      const latencies: number[] = [];
      let missing = first.missing;
      for (let round = 0; round < options.rounds; round++) {
        const change = await timeChange();
        latencies.push(...change.latencies);
        missing += change.missing;
      }
      latencies.sort((a, b) => a - b);
      const at = (share: number): number =>
        latencies[Math.min(latencies.length - 1, Math.floor(share * latencies.length))] ?? NaN;
      results.push({
        watchers,
        rss,
        firstMaxMs: Math.max(...first.latencies),
        p50Ms: at(0.5),
        p99Ms: at(0.99),
        maxMs: latencies.at(-1) ?? NaN,
        missing,
      });
    }
    await service.client.cancelBackup({ uuid });
    peakRss = await service.peakRss();
    console.log(
      `\nwatchers: idle WatchBackup streams of one active job held by one daemon (clients in ${CLIENT_PROCESSES} ` +
        `other processes); a speed change timed from SetBackupSpeed until each watcher has it, ${options.rounds} rounds ` +
        "after the first change (its last delivery is shown apart):",
    );
    console.log("  watchers   daemon RSS   first change   delivery p50   p99        max        missing");
    for (const level of results) {
      console.log(
        `  ${String(level.watchers).padStart(8)}   ${formatMiB(level.rss).padStart(10)}   ` +
          `${level.firstMaxMs.toFixed(1).padStart(9)} ms   ` +
          `${level.p50Ms.toFixed(1).padStart(9)} ms  ${level.p99Ms.toFixed(1).padStart(6)} ms  ` +
          `${level.maxMs.toFixed(1).padStart(6)} ms  ${level.missing}`,
      );
    }
    console.log(`  daemon peak RSS: ${formatMiB(peakRss)}`);
  } finally {
    for (const client of clients) client.stop();
    await service.stop();
    await rm(root, { recursive: true, force: true });
  }
  return { levels: results, peakRss };
}

interface WatchClient {
  ask(command: ClientCommand): Promise<ClientReply>;
  stop(): void;
}

function startClient(): WatchClient {
  const child: ChildProcess = fork(resolve(import.meta.dirname, "watch-clients.ts"), [], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  return {
    ask: (command) =>
      new Promise((answer, reject) => {
        const onExit = (code: number | null): void => reject(new Error(`watch client exited ${code}`));
        child.once("exit", onExit);
        child.once("message", (reply: ClientReply) => {
          child.off("exit", onExit);
          answer(reply);
        });
        child.send(command);
      }),
    stop: () => {
      if (child.connected) child.send({ type: "close" } satisfies ClientCommand);
      setTimeout(() => child.kill(), 2000).unref();
    },
  };
}

if (process.argv[1] === import.meta.filename) {
  const levels = (process.env.BENCH_WATCHERS ?? "100,1000,5000,10000").split(",").map(Number);
  await benchWatchers({ levels, rounds: Number(process.env.BENCH_WATCH_ROUNDS ?? 20) });
}
