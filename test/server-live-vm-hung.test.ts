// A QEMU that stops answering in the middle of a qemu-source job: the job
// still ends (cancelled, within the teardown timeouts), and what the
// teardown could not remove from QEMU stays journaled, so the next start of
// `vmabackup serve` on the state dir undoes the freeze and the VM can be
// backed up again. (Slow by nature: the teardown waits out QEMU's silence.)
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { followJob, MiB, qemuDevice, sourceLeftovers } from "./helpers/live-vm.js";
import { blockState, makeDisks, type QemuProcess, startStorageDaemon } from "./helpers/qemu-guest.js";
import { listeningAddress, runServe, type ServeProcess, serveArgs } from "./helpers/serve-process.js";
import type { BackupClient } from "./helpers/test-server.js";

let rootDir: string;
let stateDir: string;
let qsd: QemuProcess;
const processes: ServeProcess[] = [];
const clients: BackupClient[] = [];

beforeAll(async () => {
  rootDir = await mkdtemp(join(tmpdir(), "vmab-live-hung-"));
  stateDir = join(rootDir, "state");
  await Promise.all(["backups", "sources", "state", "qemu"].map((name) => mkdir(join(rootDir, name))));
  qsd = await startStorageDaemon(join(rootDir, "qemu"), makeDisks(join(rootDir, "qemu"), 1));
});

afterAll(async () => {
  qsd?.child.kill("SIGCONT");
  for (const client of clients) client.close();
  await Promise.all(processes.map((serve) => serve.kill()));
  await qsd?.stop();
  if (rootDir !== undefined) await rm(rootDir, { recursive: true, force: true });
});

async function serve(): Promise<{ process: ServeProcess; client: BackupClient }> {
  const started = runServe([
    ...serveArgs({ backupDir: join(rootDir, "backups"), sourceRoot: join(rootDir, "sources"), stateDir }),
    "--qmp-root",
    join(rootDir, "qemu"),
    "--progress-interval",
    "50ms",
  ]);
  processes.push(started);
  const client = createClient(BackupService, await listeningAddress(started));
  clients.push(client);
  return { process: started, client };
}

it("keeps an unfinished teardown journaled until the next server start undoes it", async () => {
  const untouched = await blockState(qsd.testQmpSocket);
  const first = await serve();
  const devices = [qemuDevice("drive-scsi0", qsd.qmpSocket, "live0")];
  const response = await first.client.backup({ backupFile: "hung.vma", devices, speedLimit: BigInt(MiB) });
  const uuid = response.status?.uuid ?? "";
  for await (const message of first.client.watchBackup({ uuid })) {
    if ((message.status?.transferredBytes ?? 0n) > 0n) break;
  }
  const statuses = followJob(first.client, uuid);

  qsd.child.kill("SIGSTOP");
  await first.client.cancelBackup({ uuid });
  const last = (await statuses).at(-1);
  qsd.child.kill("SIGCONT");
  expect(last?.state).toBe(BackupState.CANCELLED);
  // Logged before CANCELLED went out, but the log pipe and the gRPC socket are read in either order.
  await first.process.waitForLog((line) => line.msg.startsWith("could not fully undo a freeze"));
  // What is left in QEMU is still on record (and QEMU's NBD server still marked as ours).
  expect(await blockState(qsd.testQmpSocket)).not.toBe(untouched);
  expect((await sourceLeftovers(stateDir)).journal).toHaveLength(1);

  first.process.child.kill("SIGTERM");
  expect((await first.process.exited).code).toBe(0);
  const second = await serve();
  await second.process.waitForLog((line) => line.msg === "undid a freeze a crashed server left in QEMU");
  expect(await blockState(qsd.testQmpSocket)).toBe(untouched);
  expect(await sourceLeftovers(stateDir)).toEqual({ scratch: [], journal: [] });

  // QEMU's NBD server was stopped too: the VM can be backed up again.
  const again = await second.client.backup({ backupFile: "again.vma", devices });
  const done = (await followJob(second.client, again.status?.uuid ?? "")).at(-1);
  expect(done?.state, done?.errorMessage).toBe(BackupState.DONE);
  expect(await blockState(qsd.testQmpSocket)).toBe(untouched);
  // ~15 s: the teardown waits out QMP's 10 s command timeout; up to 30 s more when a read was in
  // flight at the SIGSTOP (the job ends only when that NBD request times out).
}, 90_000);
