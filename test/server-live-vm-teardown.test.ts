// Whatever way a qemu-source job ends, QEMU is left as it was (block jobs,
// nodes, exports) and the server's state dir holds no scratch overlay and no
// journal record: DONE, ERROR (the fleecing job cancelled from outside),
// CANCELLED, a server shut down mid-job (SIGTERM to `vmabackup serve`), and
// a server killed mid-job (SIGKILL) and started again on its state dir.
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { QmpClient } from "../src/sources/qemu/qmp-client.js";
import { followJob, MiB, qemuDevice, sourceLeftovers } from "./helpers/live-vm.js";
import { blockState, makeDisks, type QemuProcess, startStorageDaemon } from "./helpers/qemu-guest.js";
import { listeningAddress, runServe, type ServeProcess, serveArgs } from "./helpers/serve-process.js";
import { type BackupClient, startTestServer, type TestServer } from "./helpers/test-server.js";

let qemuDir: string;
let qsd: QemuProcess;
/** blockState of the daemon before any job. */
let untouched: string;

beforeAll(async () => {
  qemuDir = await mkdtemp(join(tmpdir(), "vmab-live-teardown-"));
  qsd = await startStorageDaemon(qemuDir, makeDisks(qemuDir, 2));
  untouched = await blockState(qsd.testQmpSocket);
});

afterAll(async () => {
  await qsd?.stop();
  if (qemuDir !== undefined) await rm(qemuDir, { recursive: true, force: true });
});

const devices = (): ReturnType<typeof qemuDevice>[] => [
  qemuDevice("drive-scsi0", qsd.qmpSocket, "live0"),
  qemuDevice("drive-scsi1", qsd.qmpSocket, "live1"),
];

/** Where a server keeps what its qemu sources leave behind while a job runs. */
interface SourceDirs {
  readonly stateDir: string;
  readonly scratchDir?: string;
}

/** Starts a throttled backup of both drives (8 MiB at 2 MiB/s) and waits until it has read some. */
async function startRunningJob(client: BackupClient, backupFile: string, dirs: SourceDirs): Promise<string> {
  const response = await client.backup({ backupFile, devices: devices(), speedLimit: BigInt(2 * MiB) });
  const uuid = response.status?.uuid ?? "";
  for await (const message of client.watchBackup({ uuid })) {
    expect(message.status?.state, message.status?.errorMessage).toBe(BackupState.ACTIVE);
    if ((message.status?.transferredBytes ?? 0n) > 0n) break;
  }
  // The freeze is in place, with its files where the checks after the end look.
  expect(await blockState(qsd.testQmpSocket)).not.toBe(untouched);
  const during = await sourceLeftovers(dirs.stateDir, dirs.scratchDir);
  expect([during.scratch.length, during.journal.length]).toEqual([2, 1]);
  return uuid;
}

async function expectAsBefore(dirs: SourceDirs): Promise<void> {
  expect(await blockState(qsd.testQmpSocket)).toBe(untouched);
  expect(await sourceLeftovers(dirs.stateDir, dirs.scratchDir)).toEqual({ scratch: [], journal: [] });
}

describe("jobs of an in-process server", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer({ qmpRoots: [qemuDir] });
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("DONE: everything is removed before the job reads DONE", async () => {
    const response = await server.client.backup({ backupFile: "done.vma", devices: devices() });
    const last = (await followJob(server.client, response.status?.uuid ?? "")).at(-1);
    expect(last?.state, last?.errorMessage).toBe(BackupState.DONE);
    await expectAsBefore(server);
  });

  it("ERROR: the fleecing job cancelled from outside fails the job naming the device, never DONE", async () => {
    const uuid = await startRunningJob(server.client, "broken.vma", server);
    const statuses = followJob(server.client, uuid);
    const monitor = await QmpClient.connect(qsd.testQmpSocket);
    try {
      const jobs = await monitor.execute<{ device: string }[]>("query-block-jobs");
      expect(jobs).toHaveLength(2);
      await monitor.execute("block-job-cancel", { device: jobs[0]?.device, force: true });
    } finally {
      monitor.close();
    }
    const last = (await statuses).at(-1);
    expect(last?.state).toBe(BackupState.ERROR);
    // Either drive's job ending breaks the one point in time: the read of either device fails.
    expect(last?.errorMessage).toMatch(/^device drive-scsi[01]: .*BLOCK_JOB_CANCELLED/);
    expect(await readdir(server.backupDir)).not.toContain("broken.vma");
    await expectAsBefore(server);
  });

  it("CANCELLED: CancelBackup mid-job", async () => {
    const uuid = await startRunningJob(server.client, "cancelled.vma", server);
    const statuses = followJob(server.client, uuid);
    await server.client.cancelBackup({ uuid });
    expect((await statuses).at(-1)?.state).toBe(BackupState.CANCELLED);
    await expectAsBefore(server);
  });
});

describe("jobs of a `vmabackup serve` process", () => {
  let rootDir: string;
  let stateDir: string;
  /** A --scratch-dir outside the state dir. */
  let dirs: SourceDirs;
  const processes: ServeProcess[] = [];
  const clients: BackupClient[] = [];

  beforeAll(async () => {
    rootDir = await mkdtemp(join(tmpdir(), "vmab-live-serve-"));
    stateDir = join(rootDir, "state");
    dirs = { stateDir, scratchDir: join(rootDir, "scratch-elsewhere") };
    await Promise.all(["backups", "sources", "state"].map((name) => mkdir(join(rootDir, name))));
  });

  afterAll(async () => {
    for (const client of clients) client.close();
    await Promise.all(processes.map((serve) => serve.kill()));
    await rm(rootDir, { recursive: true, force: true });
  });

  async function serve(): Promise<{ process: ServeProcess; client: BackupClient }> {
    const started = runServe([
      ...serveArgs({ backupDir: join(rootDir, "backups"), sourceRoot: join(rootDir, "sources"), stateDir }),
      "--qmp-root",
      qemuDir,
      "--scratch-dir",
      dirs.scratchDir ?? "",
      "--progress-interval",
      "50ms",
    ]);
    processes.push(started);
    const client = createClient(BackupService, await listeningAddress(started));
    clients.push(client);
    return { process: started, client };
  }

  /** The job the SIGTERM test's shutdown cancelled; the SIGKILL test's restarted server reads it back. */
  let cancelledByShutdown = "";

  it("SIGTERM mid-job: the server undoes the freeze before it exits", async () => {
    const { process, client } = await serve();
    cancelledByShutdown = await startRunningJob(client, "sigterm.vma", dirs);
    process.child.kill("SIGTERM");
    expect((await process.exited).code).toBe(0);
    await expectAsBefore(dirs);
  });

  it("SIGKILL mid-job: the freeze stays until a server starts on the state dir and undoes it", async () => {
    const first = await serve();
    const killed = await startRunningJob(first.client, "sigkill.vma", dirs);
    first.process.child.kill("SIGKILL");
    await first.process.exited;
    // Nobody cleaned up after the dead process.
    expect(await blockState(qsd.testQmpSocket)).not.toBe(untouched);
    const left = await sourceLeftovers(stateDir, dirs.scratchDir);
    expect([left.scratch.length, left.journal.length]).toEqual([2, 1]);

    const second = await serve();
    await second.process.waitForLog((line) => line.msg === "undid a freeze a crashed server left in QEMU");
    await expectAsBefore(dirs);
    const listed = await second.client.listBackups({});
    expect(listed.statuses.map((status) => [status.uuid, status.state, status.errorMessage])).toEqual([
      [killed, BackupState.ERROR, "interrupted: server restarted"],
      [cancelledByShutdown, BackupState.CANCELLED, "cancelled: the server is shutting down"],
    ]);
    expect(await readdir(join(rootDir, "backups"))).toEqual([]);
    second.process.child.kill("SIGTERM");
    expect((await second.process.exited).code).toBe(0);
  });
});
