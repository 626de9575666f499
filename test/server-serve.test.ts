// `vmabackup serve` as a real child process: it logs JSON lines with the
// bound address, and SIGTERM shuts it down cleanly (watch streams end,
// active jobs are cancelled, no partial file is left, exit code 0).
import { spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/server/grpc-client.js";

const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MiB = 1024 * 1024;

interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [key: string]: unknown;
}

interface ServeProcess {
  readonly child: ChildProcessWithoutNullStreams;
  /** Every stdout line, parsed; the test fails on a line that is not JSON. */
  readonly logs: LogLine[];
  readonly stderr: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first log line that `match` accepts. */
  waitForLog(match: (line: LogLine) => boolean): Promise<LogLine>;
}

function runServe(args: string[]): ServeProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve", ...args], {
    cwd: PROJECT_ROOT,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  const stderr: string[] = [];
  const waiters: Array<{ match: (line: LogLine) => boolean; resolve: (line: LogLine) => void }> = [];
  createInterface({ input: child.stdout }).on("line", (text) => {
    const line = JSON.parse(text) as LogLine;
    logs.push(line);
    for (const waiter of [...waiters]) {
      if (waiter.match(line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => stderr.push(chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    logs,
    stderr,
    exited,
    waitForLog(match) {
      const found = logs.find(match);
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        waiters.push({ match, resolve });
        void exited.then(({ code }) =>
          reject(new Error(`serve exited (${code}) first; stderr: ${stderr.join("")}`)),
        );
      });
    },
  };
}

let rootDir: string;
let running: ServeProcess | undefined;
const refused: ServeProcess[] = [];

beforeEach(async () => {
  rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-serve-"));
});

afterEach(async () => {
  if (running !== undefined && running.child.exitCode === null && running.child.signalCode === null) {
    running.child.kill("SIGKILL");
    await running.exited;
  }
  running = undefined;
  for (const child of refused.splice(0)) {
    if (child.child.exitCode === null && child.child.signalCode === null) child.child.kill("SIGKILL");
    await child.exited;
  }
  await rm(rootDir, { recursive: true, force: true });
});

describe("vmabackup serve", () => {
  it.each(["SIGTERM", "SIGINT"] as const)("creates its directories, serves, and on %s ends watchers, cancels jobs and exits 0", async (signal) => {
    const backupDir = path.join(rootDir, "var/backups");
    const sourceDir = path.join(rootDir, "var/images");
    const stateDir = path.join(rootDir, "var/state");
    running = runServe([
      "--listen", "127.0.0.1:0",
      "--backup-dir", backupDir,
      "--source-root", sourceDir,
      "--state-dir", stateDir,
      "--progress-interval", "100ms",
    ]);
    const listening = await running.waitForLog((line) => line.msg === "listening");
    expect(listening.address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(await readdir(rootDir + "/var")).toEqual(["backups", "images", "state"]);

    const client = createClient(BackupService, listening.address as string);
    try {
      const image = path.join(sourceDir, "disk.raw");
      await writeFile(image, Buffer.alloc(8 * MiB, 7));
      const started = await client.backup({
        backupFile: "vm-100.vma",
        devices: [{ name: "drive-scsi0", path: image }],
        speedLimit: BigInt(MiB),
      });
      const uuid = started.status!.uuid;

      const seen: BackupStatus[] = [];
      let firstMessage!: () => void;
      const gotFirst = new Promise<void>((resolve) => (firstMessage = resolve));
      const watching = (async () => {
        for await (const message of client.watchBackup({ uuid })) {
          seen.push(message.status!);
          firstMessage();
        }
      })();
      await gotFirst;
      expect(seen[0]!.state).toBe(BackupState.ACTIVE);

      const signalledAt = Date.now();
      running.child.kill(signal);
      // The watch stream ends (without an error) and the process exits 0.
      await watching;
      const { code } = await running.exited;
      expect(code).toBe(0);
      expect(Date.now() - signalledAt).toBeLessThan(5000);

      expect(await readdir(backupDir)).toEqual([]);
      // Job start and end are logged with the job's uuid; the end with bytes, duration and rate.
      const ofJob = running.logs.filter((line) => line.uuid === uuid);
      expect(ofJob.map((line) => line.msg)).toEqual(["backup started", "backup finished"]);
      expect(ofJob[1]).toMatchObject({ state: "cancelled" });
      expect(ofJob[1]).toHaveProperty("transferredBytes");
      expect(ofJob[1]).toHaveProperty("durationMs");
      expect(ofJob[1]).toHaveProperty("bytesPerSecond");
      expect(running.logs.find((line) => line.msg === "shutting down")).toMatchObject({ reason: signal });
      expect(running.logs.at(-1)?.msg).toBe("stopped");
    } finally {
      client.close();
    }
  });

  it("refuses bad flag values with exit code 2 and a message naming the flag", async () => {
    const cases: Array<[string[], RegExp]> = [
      [["--progress-interval", "soon"], /--progress-interval/],
      [["--progress-interval", "-5s"], /--progress-interval/],
      [["--listen", "nowhere"], /--listen/],
      [["--log-level", "loud"], /--log-level/],
    ];
    // In parallel: each child spends most of its life compiling TypeScript.
    const children = cases.map(([args]) =>
      runServe(["--backup-dir", path.join(rootDir, "b"), "--state-dir", path.join(rootDir, "s"), ...args]),
    );
    refused.push(...children);
    for (const [index, child] of children.entries()) {
      const { code } = await child.exited;
      expect(code).toBe(2);
      expect(child.stderr.join("")).toMatch(cases[index]![1]);
      expect(child.logs).toEqual([]);
    }
    // Refused before anything was created.
    expect(await readdir(rootDir)).toEqual([]);
  });
});
