// Image and NBD sources end to end through the real server: disk images
// (qcow2 with a backing file, vmdk, vdi, a raw file that looks like qcow2)
// back up as the guest sees them, equal to `qemu-img convert -O raw`; NBD
// exports of nbdkit and qemu-nbd back up byte for byte with their zero
// extents never read; an export that dies mid-job ends the job in ERROR
// naming the device while the server keeps serving.
import { execFileSync } from "node:child_process";
import { createReadStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupState, ImageFormat, SourceKind } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus, DeviceSchema } from "../gen/vmabackup/v1/backup_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { extractArchive } from "../src/vma/extract-archive.js";
import { startNbdkit, startQemuNbd, type NbdServerProcess } from "./helpers/nbd-servers.js";
import { startTestServer, type TestServer } from "./helpers/test-server.js";

const MiB = 1024 * 1024;
let server: TestServer;
let nbdDir: string;
const nbdServers: NbdServerProcess[] = [];

function run(command: string, ...args: string[]): string {
  return execFileSync(command, args, { cwd: server.sourceDir, encoding: "utf8" });
}

async function waitForEnd(uuid: string): Promise<BackupStatus> {
  let last: BackupStatus | undefined;
  for await (const message of server.client.watchBackup({ uuid })) last = message.status;
  if (last === undefined) throw new Error("no status");
  return last;
}

type DeviceInit = MessageInitShape<typeof DeviceSchema>;

/** Backs up `devices`, waits for the end, and extracts the archive when DONE. */
async function backUp(
  name: string,
  devices: DeviceInit[],
): Promise<{ status: BackupStatus; disks: Map<string, Buffer> }> {
  const { status: started } = await server.client.backup({ backupFile: `${name}.vma`, devices });
  const status = await waitForEnd(started!.uuid);
  const disks = new Map<string, Buffer>();
  if (status.state !== BackupState.DONE) return { status, disks };
  const dir = path.join(server.rootDir, `x-${name}`);
  const result = await extractArchive(createReadStream(status.backupFile), {
    dir,
    sparse: true,
    allowIncomplete: false,
  });
  expect(result.problems).toEqual([]);
  for (const device of devices) disks.set(device.name!, await fs.readFile(path.join(dir, `disk-${device.name}.raw`)));
  return { status, disks };
}

async function converted(image: string, format: string): Promise<Buffer> {
  const out = path.join(server.rootDir, `${path.basename(image)}.raw`);
  run("qemu-img", "convert", "-f", format, image, "-O", "raw", out);
  return fs.readFile(out);
}

beforeAll(async () => {
  nbdDir = await fs.mkdtemp(path.join(os.tmpdir(), "vmab-nbd-"));
  server = await startTestServer({ progressIntervalMs: 20, nbdAllow: [nbdDir] });
});

afterAll(async () => {
  await Promise.allSettled(nbdServers.map((nbd) => nbd.stop()));
  await server?.stop();
  await fs.rm(nbdDir, { recursive: true, force: true });
});

describe("image sources", () => {
  it("back up a qcow2 with a backing file, a vmdk and a vdi as the guest sees them", async () => {
    run("qemu-img", "create", "-q", "-f", "raw", "base.raw", "3M");
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x12 2M 64k", "base.raw");
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.raw", "top.qcow2");
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512k 1M", "-c", "write -z 0 64k", "top.qcow2");
    run("qemu-img", "convert", "-f", "qcow2", "top.qcow2", "-O", "vmdk", "disk.vmdk");
    run("qemu-img", "convert", "-f", "qcow2", "top.qcow2", "-O", "vdi", "disk.vdi");
    const image = (name: string, file: string, format: ImageFormat): DeviceInit => ({
      name,
      source: { case: "image", value: { path: path.join(server.sourceDir, file), format } },
    });
    const { status, disks } = await backUp("images", [
      image("drive-scsi0", "top.qcow2", ImageFormat.QCOW2),
      image("drive-scsi1", "disk.vmdk", ImageFormat.VMDK),
      image("drive-scsi2", "disk.vdi", ImageFormat.VDI),
    ]);
    expect(status.errorMessage).toBe("");
    expect(status.state).toBe(BackupState.DONE);
    const expected = await converted(path.join(server.sourceDir, "top.qcow2"), "qcow2");
    for (const name of ["drive-scsi0", "drive-scsi1", "drive-scsi2"])
      expect(disks.get(name)?.equals(expected)).toBe(true);
    const first = status.devices[0];
    expect(first?.sourceKind).toBe(SourceKind.IMAGE);
    expect(first?.source).toBe(path.join(server.sourceDir, "top.qcow2"));
    // The unwritten and zeroed parts were mapped as zero and never read.
    expect(first?.zeroBytes).toBeGreaterThanOrEqual(BigInt(MiB));
    // No daemon and no socket stay behind.
    expect(await fs.readdir(path.join(server.stateDir, "images"))).toEqual([]);
  });

  it("backs up a raw file whose first bytes are a qcow2 header as raw when the client says raw", async () => {
    run("qemu-img", "create", "-q", "-f", "qcow2", "inner.qcow2", "1M");
    const looksLikeQcow2 = Buffer.alloc(2 * MiB);
    (await fs.readFile(path.join(server.sourceDir, "inner.qcow2"))).copy(looksLikeQcow2);
    const file = await server.writeSource("guest.raw", looksLikeQcow2);
    const { status, disks } = await backUp("raw-image", [
      { name: "drive-scsi0", source: { case: "image", value: { path: file, format: ImageFormat.RAW } } },
    ]);
    expect(status.state).toBe(BackupState.DONE);
    expect(disks.get("drive-scsi0")?.equals(looksLikeQcow2)).toBe(true);
  });
});

describe("nbd sources", () => {
  it("back up nbdkit and qemu-nbd exports byte for byte, zero extents never read", async () => {
    const file = await server.writeSource("nbd-disk.raw", Buffer.alloc(4 * MiB));
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 256k", "-c", "write -P 0xa5 3M 4k", file);
    const qemuNbd = await startQemuNbd(nbdDir, ["-f", "raw", "-r", file]);
    nbdServers.push(qemuNbd);
    const nbdkit = await startNbdkit(nbdDir, ["sparse-random", "size=8M", "percent=10", "seed=7"]);
    nbdServers.push(nbdkit);
    const { status, disks } = await backUp("nbd", [
      { name: "drive-scsi0", source: { case: "nbd", value: { uri: qemuNbd.uri() } } },
      { name: "drive-scsi1", source: { case: "nbd", value: { uri: nbdkit.uri() } } },
    ]);
    expect(status.errorMessage).toBe("");
    expect(status.state).toBe(BackupState.DONE);
    expect(disks.get("drive-scsi0")?.equals(await fs.readFile(file))).toBe(true);
    const copied = path.join(server.rootDir, "sparse-random.raw");
    execFileSync("nbdcopy", [nbdkit.uri(), copied]);
    expect(disks.get("drive-scsi1")?.equals(await fs.readFile(copied))).toBe(true);
    expect(status.devices[0]?.sourceKind).toBe(SourceKind.NBD);
    expect(status.devices[0]?.source).toBe(qemuNbd.uri());
    // 4 MiB - 260 KiB of zeroes, all known from block status.
    expect(status.devices[0]?.zeroBytes).toBe(BigInt(4 * MiB - 260 * 1024));
  });

  it("ends in ERROR naming the device when the export goes away mid-job, and keeps serving", async () => {
    const nbdkit = await startNbdkit(nbdDir, ["pattern", "size=64M"]);
    nbdServers.push(nbdkit);
    const { status: started } = await server.client.backup({
      backupFile: "nbd-dies.vma",
      speedLimit: BigInt(4 * MiB),
      devices: [{ name: "drive-scsi0", source: { case: "nbd", value: { uri: nbdkit.uri() } } }],
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    await nbdkit.stop();
    const ended = await waitForEnd(started!.uuid);
    expect(ended.state).toBe(BackupState.ERROR);
    expect(ended.errorMessage).toMatch(/^device drive-scsi0: /);
    expect(await fs.readdir(server.backupDir)).not.toContain("nbd-dies.vma");
    const { status: next } = await server.client.queryBackup({ uuid: started!.uuid });
    expect(next?.state).toBe(BackupState.ERROR);
  });
});
