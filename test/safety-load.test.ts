// Load: 1,000 WatchBackup streams over 5 concurrent jobs while half of them
// disconnect abruptly at random moments (cancelled calls, and a client
// process killed outright). Every surviving watcher sees every state change
// of its job, and the server's heap after GC returns to its idle level.
// Then 200 Backup calls race for one device: exactly one job starts.
//
// The server runs in a child process of its own (test/helpers/load-server.ts,
// started with --expose-gc) so that the heap measured is the server's alone,
// not that of the thousand clients in this process.
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { startLoadServer } from "./helpers/load-server.js";
import type { LoadServer, ServerStats } from "./helpers/load-server.js";
import { startRemoteClient } from "./helpers/remote-client.js";
import { KiB, MiB, rpcErrorOf, waitForEnd } from "./helpers/safety-server.js";
import type { BackupClient } from "./helpers/safety-server.js";

const JOBS = 5;
const WATCHERS_PER_JOB = 200;
/** Of each job's watchers: these cancel their call at a random moment... */
const CANCELLING_PER_JOB = 80;
/** ...and these live in a client process that is SIGKILLed at a random moment. */
const KILLED_PER_JOB = 20;
const JOB_BYTES = 8 * MiB;
/** Slow enough that no job ends before every watcher has connected and half have left; then unlimited. */
const JOB_SPEED = 512 * KiB;
/** The random moments of leaving fall in this window after all watchers have connected. */
const LEAVE_WINDOW_MS = 1500;
const CHANNELS = 8;
const RACERS = 200;
/** How far above its idle level the server's heap may settle after the load. */
const HEAP_TOLERANCE_BYTES = 2 * MiB;

let rootDir: string;
let sourceDir: string;
let backupDir: string;
let server: LoadServer;
const clients: BackupClient[] = [];
const figures: string[] = [];

beforeAll(async () => {
  rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-load-"));
  sourceDir = path.join(rootDir, "sources");
  backupDir = path.join(rootDir, "backups");
  const stateDir = path.join(rootDir, "state");
  await Promise.all([sourceDir, backupDir, stateDir].map((dir) => mkdir(dir)));
  server = await startLoadServer({ sourceDir, backupDir, stateDir });
  // Separate subchannel pools: each client gets its own TCP connection.
  for (let index = 0; index < CHANNELS; index++) {
    clients.push(
      createClient(BackupService, server.address, grpc.credentials.createInsecure(), {
        "grpc.use_local_subchannel_pool": 1,
      }),
    );
  }
});

afterAll(async () => {
  for (const client of clients) client.close();
  await server?.stop();
  await rm(rootDir, { recursive: true, force: true });
  console.info(figures.join("\n"));
});

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(2)} MiB`;
}

/** A source of `bytes` with some data in every 1 MiB, so the archive is written to as well. */
async function writeSource(name: string, bytes: number): Promise<string> {
  const data = Buffer.alloc(bytes);
  for (let offset = 0; offset < bytes; offset += MiB) data.fill(0x77, offset, offset + 64 * KiB);
  const file = path.join(sourceDir, name);
  await writeFile(file, data);
  return file;
}

/** Runs one small job with a few watchers, so that lazily built state exists before the idle measurement. */
async function warmUp(): Promise<void> {
  const source = await writeSource("warm-up.raw", 512 * KiB);
  const client = clients[0]!;
  const started = await client.backup({
    backupFile: "warm-up.vma",
    devices: [{ name: "drive-scsi0", path: source }],
    speedLimit: BigInt(MiB),
  });
  const uuid = started.status!.uuid;
  const watchers = clients.map((each) => waitForEnd(each, uuid));
  const leaver = new AbortController();
  const leaving = (async () => {
    for await (const _message of client.watchBackup({ uuid }, { signal: leaver.signal })) leaver.abort();
  })().catch(() => undefined);
  await Promise.all([...watchers, leaving]);
}

/** Polls the server until `condition` holds for its stats. */
async function serverSettles(condition: (stats: ServerStats) => boolean, timeoutMs = 5000): Promise<ServerStats> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stats = await server.stats();
    if (condition(stats) || Date.now() > deadline) return stats;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

interface WatcherRecord {
  readonly uuid: string;
  readonly statuses: BackupStatus[];
  error?: grpc.ServiceError;
}

interface Watcher {
  /** Resolves with everything the stream delivered, once it ended. */
  readonly done: Promise<WatcherRecord>;
  /** Resolves at the first message. */
  readonly connected: Promise<void>;
  /** Cancels the call (RST_STREAM), as a client that goes away does. */
  leave(): void;
}

/** Follows `uuid` until the stream ends or leave() is called. */
function watch(client: BackupClient, uuid: string): Watcher {
  const record: WatcherRecord = { uuid, statuses: [] };
  const controller = new AbortController();
  let connect!: () => void;
  const connected = new Promise<void>((resolve) => (connect = resolve));
  const done = (async () => {
    try {
      for await (const message of client.watchBackup({ uuid }, { signal: controller.signal })) {
        record.statuses.push(message.status!);
        connect();
      }
    } catch (error) {
      record.error = error as grpc.ServiceError;
    }
    connect();
    return record;
  })();
  return { done, connected, leave: () => controller.abort() };
}

describe("1,000 watchers over 5 jobs", () => {
  it("every surviving watcher sees every state change, and the heap returns to its idle level", async () => {
    await warmUp();
    const idle = await serverSettles((stats) => stats.watchers === 0);
    expect(idle.watchers).toBe(0);

    const sources = await Promise.all(
      Array.from({ length: JOBS }, (_, index) => writeSource(`load-${index}.raw`, JOB_BYTES)),
    );
    const uuids: string[] = [];
    for (const [index, source] of sources.entries()) {
      const started = await clients[index % CHANNELS]!.backup({
        backupFile: `load-${index}.vma`,
        devices: [{ name: "drive-scsi0", path: source }],
        speedLimit: BigInt(JOB_SPEED),
      });
      uuids.push(started.status!.uuid);
    }
    // Out-of-process watchers first (a process takes a moment to start); they are SIGKILLed later.
    const remote = startRemoteClient({ mode: "watch", address: server.address, uuids, perJob: KILLED_PER_JOB });
    await remote.waitFor((event) => event.event === "ready");
    // In-process watchers, spread over the channels: survivors and cancellers.
    const survivors: Watcher[] = [];
    const cancellers: Watcher[] = [];
    let next = 0;
    for (const uuid of uuids) {
      for (let index = 0; index < WATCHERS_PER_JOB - KILLED_PER_JOB; index++) {
        (index < CANCELLING_PER_JOB ? cancellers : survivors).push(watch(clients[next++ % CHANNELS]!, uuid));
      }
    }
    await Promise.all([...survivors, ...cancellers].map((watcher) => watcher.connected));
    const held = await server.stats();
    figures.push(
      `watchers held at once: ${held.watchers} (server heap ${mib(held.heapUsed)} after GC, rss ${mib(held.rss)})`,
    );
    expect(held.watchers).toBe(JOBS * WATCHERS_PER_JOB);

    // Half of them leave at random moments while the jobs run; then the jobs run to their end at full speed.
    const leaving = [
      ...cancellers.map(
        (watcher) =>
          new Promise<void>((resolve) =>
            setTimeout(() => {
              watcher.leave();
              resolve();
            }, Math.random() * LEAVE_WINDOW_MS),
          ),
      ),
      new Promise<void>((resolve) => setTimeout(resolve, Math.random() * LEAVE_WINDOW_MS)).then(() => remote.kill()),
    ];
    await Promise.all(leaving);
    for (const uuid of uuids) {
      const { status } = await clients[0]!.setBackupSpeed({ uuid, speedLimit: 0n });
      expect(status!.state).toBe(BackupState.ACTIVE);
    }

    const cancelled = await Promise.all(cancellers.map((watcher) => watcher.done));
    const survived = await Promise.all(survivors.map((watcher) => watcher.done));
    for (const record of cancelled) expect(record.error?.code).toBe(grpc.status.CANCELLED);
    const leftEarly = cancelled.filter((record) => record.error !== undefined).length;
    expect(leftEarly).toBe(JOBS * CANCELLING_PER_JOB);

    // Survivors: ACTIVE first, DONE last, nothing else, bytes never going back.
    for (const record of survived) {
      expect(record.error).toBeUndefined();
      const states = record.statuses.map((status) => BackupState[status.state]);
      expect(states[0]).toBe("ACTIVE");
      expect(states.at(-1)).toBe("DONE");
      expect(new Set(states.slice(1, -1))).toEqual(new Set(states.length > 2 ? ["ACTIVE"] : []));
      const bytes = record.statuses.map((status) => Number(status.transferredBytes));
      expect(bytes).toEqual([...bytes].sort((a, b) => a - b));
      expect(bytes.at(-1)).toBe(JOB_BYTES);
      expect(record.statuses.every((status) => status.uuid === record.uuid)).toBe(true);
    }
    expect(survived).toHaveLength(JOBS * (WATCHERS_PER_JOB - CANCELLING_PER_JOB - KILLED_PER_JOB));
    const messages = survived.reduce((sum, record) => sum + record.statuses.length, 0);

    const after = await serverSettles(
      (stats) => stats.watchers === 0 && stats.heapUsed <= idle.heapUsed + HEAP_TOLERANCE_BYTES,
    );
    figures.push(
      `survivors: ${survived.length} (${messages} messages, every one saw ACTIVE ... DONE); cancelled: ${leftEarly} ` +
        `of ${cancelled.length}; killed with their process: ${JOBS * KILLED_PER_JOB}`,
      `server heap after GC: idle ${mib(idle.heapUsed)}, with ${held.watchers} watchers ${mib(held.heapUsed)}, ` +
        `after ${mib(after.heapUsed)} (rss ${mib(idle.rss)} -> ${mib(after.rss)})`,
    );
    expect(after.watchers).toBe(0);
    expect(after.heapUsed).toBeLessThanOrEqual(idle.heapUsed + HEAP_TOLERANCE_BYTES);
    expect((await readdir(backupDir)).sort()).toEqual(
      [...sources.map((_, index) => `load-${index}.vma`), "warm-up.vma"].sort(),
    );
  });
});

describe("200 Backup calls racing for one device", () => {
  it("start exactly one job; the rest get FAILED_PRECONDITION and leave no file", async () => {
    const source = await writeSource("contended.raw", 4 * MiB);
    const before = await readdir(backupDir);
    const outcomes = await Promise.all(
      Array.from({ length: RACERS }, async (_, index) => {
        const call = clients[index % CHANNELS]!.backup({
          backupFile: `race-${index}.vma`,
          devices: [{ name: "drive-scsi0", path: source }],
          speedLimit: BigInt(MiB),
        });
        const error = await rpcErrorOf(call);
        return error === undefined ? { uuid: (await call).status!.uuid } : { code: error.code, details: error.details };
      }),
    );
    const winners = outcomes.filter((outcome): outcome is { uuid: string } => "uuid" in outcome);
    const losers = outcomes.filter((outcome): outcome is { code: grpc.status; details: string } => "code" in outcome);
    expect(winners).toHaveLength(1);
    expect(new Set(losers.map((loser) => grpc.status[loser.code]))).toEqual(new Set(["FAILED_PRECONDITION"]));
    expect(losers.every((loser) => loser.details.startsWith("devices[0].path: "))).toBe(true);
    figures.push(`racing Backup calls: ${RACERS}: ${winners.length} started, ${losers.length} FAILED_PRECONDITION`);

    const winner = winners[0]!.uuid;
    const after = (await readdir(backupDir)).filter((name) => !before.includes(name));
    expect(after).toHaveLength(1);
    expect(after[0]).toMatch(/^race-\d+\.vma\.partial$/);
    await clients[0]!.cancelBackup({ uuid: winner });
    expect((await waitForEnd(clients[0]!, winner)).state).toBe(BackupState.CANCELLED);
    expect((await readdir(backupDir)).sort()).toEqual(before.sort());
  });
});
