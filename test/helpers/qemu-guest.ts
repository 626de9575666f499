// Real QEMU processes playing a running VM for the fleecing tests: a
// qemu-storage-daemon whose drives a "guest" writes through FUSE exports
// (QEMU runs one NBD server, which fleecing needs for itself), or a real
// qemu-system-x86_64 whose guest writes are emulated with HMP qemu-io.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { QmpClient } from "../../src/sources/qemu/qmp-client.js";

export const DISK_SIZE = 4 * 1024 * 1024;

export interface QemuProcess {
  /** The monitor the code under test uses. */
  readonly qmpSocket: string;
  /** A second monitor for the test's own queries while a session holds the first. */
  readonly testQmpSocket: string;
  readonly drivePaths: readonly string[];
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

/** Raw disk files filled with random data, so that any torn or stale read shows. */
export function makeDisks(dir: string, count: number, prefix = "disk"): string[] {
  return Array.from({ length: count }, (_, index) => {
    const path = join(dir, `${prefix}${index}.raw`);
    writeFileSync(path, randomBytes(DISK_SIZE));
    return path;
  });
}

export async function startStorageDaemon(
  dir: string,
  drivePaths: readonly string[],
  options: { fuseGuests?: boolean } = {},
): Promise<QemuProcess & { readonly guestFiles: readonly string[] }> {
  const qmpSocket = join(dir, "qsd-qmp.sock");
  const testQmpSocket = join(dir, "qsd-test-qmp.sock");
  const args: string[] = [];
  const guestFiles: string[] = [];
  drivePaths.forEach((path, index) => {
    args.push("--blockdev", `driver=file,filename=${path},node-name=file${index}`);
    args.push("--blockdev", `driver=raw,file=file${index},node-name=live${index}`);
    if (options.fuseGuests === true) {
      const mountpoint = join(dir, `guest${index}`);
      writeFileSync(mountpoint, "");
      guestFiles.push(mountpoint);
      args.push("--export", `type=fuse,id=guest${index},node-name=live${index},mountpoint=${mountpoint},writable=on`);
    }
  });
  args.push("--chardev", `socket,id=qmp0,path=${qmpSocket},server=on,wait=off`, "--monitor", "chardev=qmp0");
  args.push("--chardev", `socket,id=qmp1,path=${testQmpSocket},server=on,wait=off`, "--monitor", "chardev=qmp1");
  const child = spawn("qemu-storage-daemon", args, { stdio: ["ignore", "ignore", "pipe"] });
  await waitForSockets(child, [qmpSocket, testQmpSocket]);
  return { qmpSocket, testQmpSocket, drivePaths, guestFiles, child, stop: () => stopProcess(child, guestFiles) };
}

/** A q35 VM, stopped before its first instruction, with Proxmox-style drive names on virtio-scsi disks. */
export async function startVirtualMachine(dir: string, drivePaths: readonly string[]): Promise<QemuProcess> {
  const qmpSocket = join(dir, "vm-qmp.sock");
  const testQmpSocket = join(dir, "vm-test-qmp.sock");
  const args = ["-M", "q35", "-S", "-nodefaults", "-display", "none", "-machine", "accel=tcg", "-m", "64"];
  args.push("-device", "virtio-scsi-pci,id=scsihw0");
  drivePaths.forEach((path, index) => {
    args.push("-drive", `file=${path},if=none,id=drive-scsi${index},format=raw`);
    args.push("-device", `scsi-hd,bus=scsihw0.0,scsi-id=${index},drive=drive-scsi${index},id=scsi${index}`);
  });
  args.push("-chardev", `socket,id=qmp0,path=${qmpSocket},server=on,wait=off`, "-mon", "chardev=qmp0,mode=control");
  args.push("-chardev", `socket,id=qmp1,path=${testQmpSocket},server=on,wait=off`, "-mon", "chardev=qmp1,mode=control");
  const child = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
  await waitForSockets(child, [qmpSocket, testQmpSocket]);
  return { qmpSocket, testQmpSocket, drivePaths, child, stop: () => stopProcess(child, []) };
}

async function waitForSockets(child: ChildProcess, sockets: readonly string[]): Promise<void> {
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const deadline = Date.now() + 10_000;
  while (!sockets.every((socket) => existsSync(socket))) {
    if (child.exitCode !== null) throw new Error(`QEMU exited with ${child.exitCode}: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`QEMU did not create its QMP sockets: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function stopProcess(child: ChildProcess, fuseMounts: readonly string[]): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 3_000);
    await exited;
    clearTimeout(timer);
  }
  for (const mountpoint of fuseMounts) {
    // A killed daemon leaves its FUSE mounts behind ("transport endpoint is not connected").
    try {
      execFileSync("umount", ["-l", mountpoint], { stdio: "ignore" });
    } catch {
      // not mounted: the daemon unmounted on SIGTERM
    }
  }
}

/** A guest write through QEMU's block layer (the FUSE export of the live node). */
export function guestWrite(guestFile: string, offset: number, data: Uint8Array): void {
  const fd = openSync(guestFile, "r+");
  try {
    writeSync(fd, data, 0, data.length, offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

export function fileHash(path: string): string {
  return sha256(readFileSync(path));
}

/** Reads a whole NBD export with libnbd's nbdcopy (independent of our code) and returns its bytes. */
export function readExport(socketPath: string, exportName: string, outFile: string): Buffer {
  execFileSync("nbdcopy", [`nbd+unix:///${exportName}?socket=${socketPath}`, outFile], { timeout: 20_000 });
  return readFileSync(outFile);
}

/**
 * What fleecing must leave as it found it: block jobs, exports, and the
 * block graph (node names, drivers, backing depth; not sizes, which guest
 * writes change).
 */
export async function blockState(qmpSocket: string): Promise<string> {
  const client = await QmpClient.connect(qmpSocket);
  try {
    const jobs = await client.execute("query-block-jobs");
    const allJobs = await client.execute("query-jobs");
    const exports = await client.execute("query-block-exports");
    const nodes = await client.execute<Record<string, unknown>[]>("query-named-block-nodes", { flat: true });
    const graph = nodes
      .map((node) => ({
        node: node["node-name"],
        drv: node.drv,
        ro: node.ro,
        file: node.file,
        depth: node.backing_file_depth,
      }))
      .sort((a, b) => String(a.node).localeCompare(String(b.node)));
    return JSON.stringify({ jobs, allJobs, exports, graph });
  } finally {
    client.close();
  }
}
