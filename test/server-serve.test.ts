// `vmabackup serve` as a real child process: it logs JSON lines with the
// bound address, and SIGTERM shuts it down cleanly (watch streams end,
// active jobs are cancelled, no partial file is left, exit code 0).
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { runServe, serveArgs } from "./helpers/serve-process.js";
import type { ServeProcess } from "./helpers/serve-process.js";

const MiB = 1024 * 1024;

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
  it.each(["SIGTERM", "SIGINT"] as const)(
    "creates its directories, serves, and on %s ends watchers, cancels jobs and exits 0",
    async (signal) => {
      const backupDir = path.join(rootDir, "var/backups");
      const sourceDir = path.join(rootDir, "var/images");
      const stateDir = path.join(rootDir, "var/state");
      running = runServe([
        ...serveArgs({ backupDir, sourceRoot: sourceDir, stateDir }),
        "--progress-interval",
        "100ms",
        "--nbd-allow",
        "/run/vmabackup-nbd/../nbd",
        "--nbd-allow",
        "127.0.0.1:10809",
        "--qmp-root",
        "/run/qemu-server",
      ]);
      const listening = await running.waitForLog((line) => line.msg === "listening");
      expect(listening.address).toMatch(/^127\.0\.0\.1:\d+$/);
      // The source settings reach the server, socket directories made absolute and normal.
      expect(listening).toMatchObject({ nbdAllow: ["/run/nbd", "127.0.0.1:10809"], qmpRoots: ["/run/qemu-server"] });
      expect(await readdir(`${rootDir}/var`)).toEqual(["backups", "images", "state"]);

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
    },
  );

  it("refuses bad flag values with exit code 2 and a message naming the flag", async () => {
    const cases: Array<[string[], RegExp]> = [
      [["--progress-interval", "soon"], /--progress-interval/],
      [["--progress-interval", "-5s"], /--progress-interval/],
      [["--listen", "nowhere"], /--listen/],
      [["--log-level", "loud"], /--log-level/],
      [["--nbd-allow", "host:99999"], /--nbd-allow: expected a socket directory .* or HOST\[:PORT\]/],
      [["--nbd-allow", "a host"], /--nbd-allow/],
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
