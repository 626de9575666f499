// Runs the real daemon as a child process for the benchmark, as it ships
// (bin/vmabackup.js running dist/), and times backups through its gRPC API,
// from the Backup call to the DONE status.
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient, type ServiceClient } from "../src/client/grpc-client.js";

/**
 * V8 flags the daemon ships with: those of `npm start` (the systemd unit's
 * are tested to be the same).
 */
export const DAEMON_NODE_OPTIONS: readonly string[] = (() => {
  const packageJson = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  const start: string = packageJson.scripts.start;
  return start.split(" ").filter((word) => word.startsWith("--"));
})();

export interface BenchService {
  readonly client: ServiceClient<typeof BackupService.method>;
  /** Seconds from the Backup call until the job reports DONE. */
  timeBackup(devicePath: string, backupFile: string): Promise<number>;
  /** Peak resident set size of the daemon so far (VmHWM), in bytes. */
  peakRss(): Promise<number>;
  /** Resident set size of the daemon now (VmRSS), in bytes. */
  rss(): Promise<number>;
  /** The daemon's gRPC address, host:port. */
  readonly address: string;
  stop(): Promise<void>;
}

export async function startBenchService(dirs: {
  backupDir: string;
  sourceRoot: string;
  stateDir: string;
  /** More `serve` arguments, e.g. ["--progress-interval", "1h"]. */
  extraArgs?: readonly string[];
  /** Node options for the daemon (default DAEMON_NODE_OPTIONS), e.g. ["--cpu-prof"]. */
  nodeOptions?: readonly string[];
}): Promise<BenchService> {
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const child = spawn(
    process.execPath,
    [
      ...(dirs.nodeOptions ?? DAEMON_NODE_OPTIONS),
      "bin/vmabackup.js",
      "serve",
      "--listen",
      address,
      "--backup-dir",
      dirs.backupDir,
      "--source-root",
      dirs.sourceRoot,
      "--state-dir",
      dirs.stateDir,
      "--log-level",
      "warn",
      ...(dirs.extraArgs ?? []),
    ],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  const client = createClient(BackupService, address);
  await client.waitForReady(Date.now() + 15_000);

  return {
    client,
    timeBackup: async (devicePath, backupFile) => {
      const started = process.hrtime.bigint();
      const { status } = await client.backup({ backupFile, devices: [{ name: "drive-scsi0", path: devicePath }] });
      if (!status) throw new Error("Backup returned no status");
      for await (const { status: update } of client.watchBackup({ uuid: status.uuid })) {
        if (update?.state === BackupState.DONE) break;
        if (update && update.state !== BackupState.ACTIVE) {
          throw new Error(`backup ended ${BackupState[update.state]}: ${update.errorMessage}`);
        }
      }
      return Number(process.hrtime.bigint() - started) / 1e9;
    },
    peakRss: () => memoryOf(child, "VmHWM"),
    rss: () => memoryOf(child, "VmRSS"),
    address,
    stop: async () => {
      client.close();
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** A size line of /proc/PID/status (VmHWM: peak RSS, VmRSS: RSS now), in bytes. */
async function memoryOf(child: ChildProcess, field: "VmHWM" | "VmRSS"): Promise<number> {
  const status = await readFile(`/proc/${child.pid}/status`, "utf8");
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
  if (!match) throw new Error(`no ${field} in /proc status`);
  return Number(match[1]) * 1024;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() =>
        typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port")),
      );
    });
  });
}
