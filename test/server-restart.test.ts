// Job history across server processes: `vmabackup serve` as a real child
// process is killed with SIGKILL in the middle of a throttled backup and
// started again on the same state dir. The job then reads ERROR
// "interrupted: server restarted" with its end time set, its partial file is
// gone, and the same backup can simply be run again. A job database from a
// newer vmabackup is refused with a clear message and left untouched.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import type { ClientOf } from "../src/client/grpc-client.js";
import { listeningAddress, runServe, serveArgs } from "./helpers/serve-process.js";
import type { ServeProcess } from "./helpers/serve-process.js";

const MiB = 1024 * 1024;

let rootDir: string;
let backupDir: string;
let sourceDir: string;
let stateDir: string;
const processes: ServeProcess[] = [];
const clients: Array<ClientOf<typeof BackupService>> = [];

beforeEach(async () => {
  rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-restart-"));
  backupDir = path.join(rootDir, "backups");
  sourceDir = path.join(rootDir, "images");
  stateDir = path.join(rootDir, "state");
  await Promise.all([backupDir, sourceDir, stateDir].map((dir) => mkdir(dir)));
});

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  await Promise.all(processes.splice(0).map((serve) => serve.kill()));
  await rm(rootDir, { recursive: true, force: true });
});

/** Starts `vmabackup serve` on the test's directories and a free port. */
function serve(): ServeProcess {
  const started = runServe([
    ...serveArgs({ backupDir, sourceRoot: sourceDir, stateDir }),
    "--progress-interval",
    "50ms",
  ]);
  processes.push(started);
  return started;
}

async function connect(server: ServeProcess): Promise<ClientOf<typeof BackupService>> {
  const client = createClient(BackupService, await listeningAddress(server));
  clients.push(client);
  return client;
}

async function waitForEnd(client: ClientOf<typeof BackupService>, uuid: string): Promise<BackupStatus> {
  let last: BackupStatus | undefined;
  for await (const message of client.watchBackup({ uuid })) last = message.status;
  return last!;
}

describe("a server killed in the middle of a backup", () => {
  it("reads the job as interrupted after a restart, leaves no partial file, and backs up again", async () => {
    const devices = [
      { name: "drive-scsi0", path: path.join(sourceDir, "disk0.raw") },
      { name: "drive-scsi1", path: path.join(sourceDir, "disk1.raw") },
    ];
    await writeFile(devices[0]!.path, randomBytes(2 * MiB));
    await writeFile(devices[1]!.path, randomBytes(MiB));

    const first = serve();
    const client = await connect(first);
    const started = (await client.backup({ backupFile: "vm-100.vma", devices, speedLimit: BigInt(MiB) })).status!;
    // Let it get going for well over a second (progress is stored at most
    // once a second), with data in the partial file when the process dies.
    let progressed: BackupStatus | undefined;
    for await (const message of client.watchBackup({ uuid: started.uuid })) {
      if (message.status!.transferredBytes >= BigInt(1.5 * MiB)) {
        progressed = message.status;
        break;
      }
    }
    expect(progressed?.state).toBe(BackupState.ACTIVE);
    expect(await readdir(backupDir)).toEqual(["vm-100.vma.partial"]);

    first.child.kill("SIGKILL");
    expect(await first.exited).toMatchObject({ signal: "SIGKILL" });
    // Nothing cleaned up after the dead process.
    expect(await readdir(backupDir)).toEqual(["vm-100.vma.partial"]);

    const second = serve();
    const again = await connect(second);
    const { status } = await again.queryBackup({ uuid: started.uuid });
    expect(status).toMatchObject({
      uuid: started.uuid,
      state: BackupState.ERROR,
      errorMessage: "interrupted: server restarted",
      backupFile: path.join(backupDir, "vm-100.vma"),
      rate: 0n,
    });
    expect(status!.endTime).toBeDefined();
    expect(timestampMs(status!.endTime!)).toBeGreaterThanOrEqual(timestampMs(status!.startTime!));
    expect(status!.revision).toBeGreaterThan(progressed!.revision);
    // Progress stored before the crash is still on record.
    expect(status!.transferredBytes).toBeGreaterThan(0n);
    expect(status!.transferredBytes).toBeLessThan(status!.totalBytes);
    expect(await readdir(backupDir)).toEqual([]);
    expect(
      second.logs.some((line) => line.uuid === started.uuid && line.msg === "backup interrupted by a server restart"),
    ).toBe(true);

    // The same devices to the same name: nothing is locked or left over.
    const retry = (await again.backup({ backupFile: "vm-100.vma", devices })).status!;
    const done = await waitForEnd(again, retry.uuid);
    expect(done).toMatchObject({ state: BackupState.DONE, transferredBytes: BigInt(3 * MiB) });
    expect(await readdir(backupDir)).toEqual(["vm-100.vma"]);
    const listed = await again.listBackups({});
    expect(listed.statuses.map((entry) => [entry.uuid, entry.state])).toEqual([
      [retry.uuid, BackupState.DONE],
      [started.uuid, BackupState.ERROR],
    ]);

    second.child.kill("SIGTERM");
    expect((await second.exited).code).toBe(0);
  });
});

describe("a job database from a newer vmabackup", () => {
  it("is refused with a clear message, exit code 1, and left untouched", async () => {
    const file = path.join(stateDir, "jobs.sqlite");
    const db = new DatabaseSync(file);
    db.exec("CREATE TABLE future (x)");
    db.exec("PRAGMA user_version = 99");
    db.close();

    const refused = serve();
    const { code } = await refused.exited;
    expect(code).toBe(1);
    expect(refused.stderr.join("")).toMatch(
      /^error: job database has schema version 99, newer than \d+ .*untouched\)\n$/,
    );
    expect(refused.logs.some((line) => line.msg === "listening")).toBe(false);

    const reopened = new DatabaseSync(file, { readOnly: true });
    try {
      expect(reopened.prepare("PRAGMA user_version").get()?.user_version).toBe(99);
      expect(
        reopened
          .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
          .all()
          .map((row) => row.name),
      ).toEqual(["future"]);
    } finally {
      reopened.close();
    }
  });
});

describe("a second server on the same state dir", () => {
  it("is refused with a clear message and exit code 1 while the first one runs", async () => {
    const first = serve();
    await listeningAddress(first);

    const refused = serve();
    expect((await refused.exited).code).toBe(1);
    expect(refused.stderr.join("")).toMatch(
      /^error: another vmabackup server is using this state dir .*--state-dir\n$/,
    );
    expect(refused.logs.some((line) => line.msg === "listening")).toBe(false);

    first.child.kill("SIGTERM");
    expect((await first.exited).code).toBe(0);
  });
});
