// qemu sources end to end through a real vmabackup server: a
// qemu-storage-daemon with two drives plays a running VM whose guest writes
// through FUSE exports while a throttled backup runs, a real q35 VM is
// backed up by its Proxmox-style drive names, a QEMU that dies mid-job
// fails the job naming the device, and bad input is refused before
// anything is created. Archives are extracted with our reader.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupState, SourceKind } from "../gen/vmabackup/v1/backup_pb.js";
import { QmpClient } from "../src/sources/qemu/qmp-client.js";
import { extractDisks, followJob, KiB, MiB, qemuDevice, sourceLeftovers } from "./helpers/live-vm.js";
import {
  blockState,
  DISK_SIZE,
  guestWrite,
  makeDisks,
  type QemuProcess,
  sha256,
  startStorageDaemon,
  startVirtualMachine,
} from "./helpers/qemu-guest.js";
import { expectRefusal } from "./helpers/rpc-failure.js";
import { startTestServer, type TestServer } from "./helpers/test-server.js";

/** Holds the QEMUs' sockets and disks: the server's --qmp-root. */
const qemuDir = mkdtempSync(join(tmpdir(), "vmab-live-vm-"));
const extractRoot = join(qemuDir, "extracted");
let server: TestServer;
let qsd: QemuProcess & { readonly guestFiles: readonly string[] };
const qemus: QemuProcess[] = [];

beforeAll(async () => {
  server = await startTestServer({ qmpRoots: [qemuDir] });
  qsd = await startStorageDaemon(qemuDir, makeDisks(qemuDir, 2), { fuseGuests: true });
  qemus.push(qsd);
});

afterAll(async () => {
  for (const qemu of qemus) await qemu.stop();
  await server?.stop();
  rmSync(qemuDir, { recursive: true, force: true });
});

describe("a live qemu-storage-daemon backed up through the server", () => {
  it("archives both drives as they were at the start while the guest overwrites them", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const atStart = qsd.drivePaths.map((file) => sha256(readFileSync(file)));
    const devices = [
      qemuDevice("drive-scsi0", qsd.qmpSocket, "live0"),
      qemuDevice("drive-scsi1", qsd.qmpSocket, "live1"),
    ];
    // 8 MiB at 3 MiB/s: the job lasts over two seconds.
    const response = await server.client.backup({ backupFile: "live.vma", devices, speedLimit: BigInt(3 * MiB) });
    const uuid = response.status?.uuid ?? "";
    const statuses = followJob(server.client, uuid);

    const chunk = 64 * KiB;
    const offsets = [0, DISK_SIZE / 2 - chunk / 2, DISK_SIZE - chunk];
    const pattern = (round: number, index: number): Buffer => Buffer.alloc(chunk, 0x40 + round * 16 + index);
    const rounds = 3;
    for (let round = 0; round < rounds; round++) {
      qsd.guestFiles.forEach((guestFile, index) => {
        for (const offset of offsets) guestWrite(guestFile, offset, pattern(round, index));
      });
      // Still during the job: the writes race the reads.
      expect((await server.client.queryBackup({ uuid })).status?.state).toBe(BackupState.ACTIVE);
      await new Promise((resolve) => setTimeout(resolve, 400));
    }

    const seen = await statuses;
    const last = seen.at(-1);
    expect(last?.state, last?.errorMessage).toBe(BackupState.DONE);
    const running = seen.filter((status) => status.state === BackupState.ACTIVE);
    expect(running.some((status) => status.devices.some((device) => device.scratchBytes > 0n))).toBe(true);
    expect(running[0]?.devices.map((device) => [device.name, device.sourceKind, device.source])).toEqual([
      ["drive-scsi0", SourceKind.QEMU, `${qsd.qmpSocket}:live0`],
      ["drive-scsi1", SourceKind.QEMU, `${qsd.qmpSocket}:live1`],
    ]);

    const extracted = await extractDisks(join(server.backupDir, "live.vma"), join(extractRoot, "live"));
    expect([...extracted.keys()]).toEqual(["drive-scsi0", "drive-scsi1"]);
    expect([...extracted.values()].map((disk) => sha256(disk))).toEqual(atStart);
    for (const [index, file] of qsd.drivePaths.entries()) {
      const live = readFileSync(file);
      for (const offset of offsets) {
        expect(live.subarray(offset, offset + chunk).equals(pattern(rounds - 1, index)), `${file}@${offset}`).toBe(
          true,
        );
      }
    }
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
    expect(await sourceLeftovers(server.stateDir)).toEqual({ scratch: [], journal: [] });
  });
});

describe("a real q35 VM backed up through the server", () => {
  it("archives drive-scsi0 and drive-scsi1 by their BlockBackend names", async () => {
    const vmDir = mkdtempSync(join(qemuDir, "vm-"));
    const disks = makeDisks(vmDir, 2, "vm-disk");
    const vm = await startVirtualMachine(vmDir, disks);
    qemus.push(vm);
    const before = await blockState(vm.testQmpSocket);
    const devices = [
      qemuDevice("drive-scsi0", vm.qmpSocket, "drive-scsi0"),
      qemuDevice("drive-scsi1", vm.qmpSocket, "drive-scsi1"),
    ];
    const response = await server.client.backup({ backupFile: "vm.vma", devices });
    const seen = await followJob(server.client, response.status?.uuid ?? "");
    expect(seen.at(-1)?.state, seen.at(-1)?.errorMessage).toBe(BackupState.DONE);

    const extracted = await extractDisks(join(server.backupDir, "vm.vma"), join(extractRoot, "vm"));
    expect([...extracted.keys()]).toEqual(["drive-scsi0", "drive-scsi1"]);
    disks.forEach((file, index) => {
      expect(sha256(extracted.get(`drive-scsi${index}`) ?? Buffer.alloc(0)), file).toBe(sha256(readFileSync(file)));
    });
    expect(await blockState(vm.testQmpSocket)).toBe(before);
    expect(await sourceLeftovers(server.stateDir)).toEqual({ scratch: [], journal: [] });

    // The same drive by its BlockBackend name and its node name: refused on the second naming.
    const monitor = await QmpClient.connect(vm.testQmpSocket);
    const backends = await monitor.execute<{ device: string; inserted?: { "node-name": string } }[]>("query-block");
    monitor.close();
    const nodeName = backends.find((backend) => backend.device === "drive-scsi1")?.inserted?.["node-name"] ?? "";
    const twice = await expectRefusal(
      server.client.backup({
        backupFile: "twice.vma",
        devices: [devices[0]!, devices[1]!, qemuDevice("again", vm.qmpSocket, nodeName)],
      }),
      GrpcStatus.INVALID_ARGUMENT,
      "INVALID_OPTIONS",
      "devices[2].qemu.drive",
    );
    expect(twice.details).toContain(`drive ${nodeName} is the QEMU node ${nodeName}, as is drive drive-scsi1`);
    expect(await blockState(vm.testQmpSocket)).toBe(before);
    await vm.stop();
  });
});

describe("bad qemu sources, refused before anything is created", () => {
  async function expectNothingCreated(qemu: QemuProcess, before: string, archives: string[]): Promise<void> {
    expect(await readdir(server.backupDir)).toEqual(archives);
    expect(await sourceLeftovers(server.stateDir)).toEqual({ scratch: [], journal: [] });
    expect(await blockState(qemu.testQmpSocket)).toBe(before);
  }

  it("an unknown drive: DRIVE_NOT_FOUND on that device's drive field", async () => {
    const archives = await readdir(server.backupDir);
    const before = await blockState(qsd.testQmpSocket);
    const error = await expectRefusal(
      server.client.backup({
        backupFile: "unknown-drive.vma",
        devices: [
          qemuDevice("drive-scsi0", qsd.qmpSocket, "live0"),
          qemuDevice("drive-scsi1", qsd.qmpSocket, "drive-virtio7"),
        ],
      }),
      GrpcStatus.NOT_FOUND,
      "DRIVE_NOT_FOUND",
      "devices[1].qemu.drive",
    );
    expect(error.details).toContain("drive-virtio7");
    await expectNothingCreated(qsd, before, archives);
  });

  it("a drive named twice: INVALID_OPTIONS on the second naming", async () => {
    const archives = await readdir(server.backupDir);
    const before = await blockState(qsd.testQmpSocket);
    const error = await expectRefusal(
      server.client.backup({
        backupFile: "twice.vma",
        devices: [
          qemuDevice("drive-scsi0", qsd.qmpSocket, "live0"),
          qemuDevice("drive-scsi1", qsd.qmpSocket, "live1"),
          qemuDevice("drive-scsi2", qsd.qmpSocket, "live0"),
        ],
      }),
      GrpcStatus.INVALID_ARGUMENT,
      "INVALID_OPTIONS",
      "devices[2].qemu.drive",
    );
    expect(error.details).toContain("drive live0 is named twice");
    await expectNothingCreated(qsd, before, archives);
  });

  it("a QMP socket outside --qmp-root: QMP_SOCKET_NOT_ALLOWED", async () => {
    const archives = await readdir(server.backupDir);
    const before = await blockState(qsd.testQmpSocket);
    const error = await expectRefusal(
      server.client.backup({
        backupFile: "outside.vma",
        devices: [qemuDevice("drive-scsi0", join(server.outsideDir, "qmp.sock"), "live0")],
      }),
      GrpcStatus.PERMISSION_DENIED,
      "QMP_SOCKET_NOT_ALLOWED",
      "devices[0].qemu.qmp_socket",
    );
    expect(error.details).toContain("--qmp-root");
    await expectNothingCreated(qsd, before, archives);
  });
});

describe("a second job on a QEMU whose monitor a running job holds", () => {
  it("is refused at once with QMP_SOCKET_IN_USE naming that job, which goes on to DONE", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const first = await server.client.backup({
      backupFile: "holder.vma",
      devices: [qemuDevice("drive-scsi0", qsd.qmpSocket, "live0")],
      speedLimit: BigInt(2 * MiB),
    });
    const uuid = first.status?.uuid ?? "";
    const statuses = followJob(server.client, uuid);
    const archives = await readdir(server.backupDir);
    const asked = Date.now();
    const error = await expectRefusal(
      server.client.backup({
        backupFile: "second.vma",
        devices: [qemuDevice("drive-scsi1", qsd.qmpSocket, "live1")],
      }),
      GrpcStatus.FAILED_PRECONDITION,
      "QMP_SOCKET_IN_USE",
      "devices[0].qemu.qmp_socket",
    );
    // Not after waiting for a greeting the held monitor never sends.
    expect(Date.now() - asked).toBeLessThan(2_000);
    expect(error.details).toContain(uuid);
    expect(await readdir(server.backupDir)).toEqual(archives);
    const last = (await statuses).at(-1);
    expect(last?.state, last?.errorMessage).toBe(BackupState.DONE);
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
    expect(await sourceLeftovers(server.stateDir)).toEqual({ scratch: [], journal: [] });
  });
});

describe("a QEMU that dies in the middle of a job", () => {
  it("fails the job naming the device, the server keeps serving, and a dead QEMU is QMP_UNREACHABLE", async () => {
    const dyingDir = mkdtempSync(join(qemuDir, "dying-"));
    const dying = await startStorageDaemon(dyingDir, makeDisks(dyingDir, 1));
    qemus.push(dying);
    const response = await server.client.backup({
      backupFile: "dying.vma",
      devices: [qemuDevice("drive-scsi0", dying.qmpSocket, "live0")],
      speedLimit: BigInt(MiB),
    });
    const uuid = response.status?.uuid ?? "";
    const statuses = followJob(server.client, uuid);
    for (let tries = 0; tries < 100; tries++) {
      const status = (await server.client.queryBackup({ uuid })).status;
      if ((status?.transferredBytes ?? 0n) > 0n || status?.state !== BackupState.ACTIVE) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const exited = new Promise((resolve) => dying.child.once("exit", resolve));
    dying.child.kill("SIGKILL");
    await exited;

    const last = (await statuses).at(-1);
    expect(last?.state).toBe(BackupState.ERROR);
    expect(last?.errorMessage).toContain("drive-scsi0");
    expect(await readdir(server.backupDir)).not.toContain("dying.vma");
    expect(await sourceLeftovers(server.stateDir)).toEqual({ scratch: [], journal: [] });

    // The server still serves, and the dead QEMU's socket is refused up front.
    expect((await server.client.queryBackup({ uuid })).status?.state).toBe(BackupState.ERROR);
    const archives = await readdir(server.backupDir);
    await expectRefusal(
      server.client.backup({
        backupFile: "unreachable.vma",
        devices: [qemuDevice("drive-scsi0", dying.qmpSocket, "live0")],
      }),
      GrpcStatus.FAILED_PRECONDITION,
      "QMP_UNREACHABLE",
      "devices[0].qemu.qmp_socket",
    );
    expect(await readdir(server.backupDir)).toEqual(archives);
    expect(await sourceLeftovers(server.stateDir)).toEqual({ scratch: [], journal: [] });
    await dying.stop();
  });
});
