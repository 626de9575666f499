// Image fleecing against real QEMU: a qemu-storage-daemon with two raw
// drives whose "guest" writes through FUSE exports of the live nodes (QEMU
// runs a single NBD server, which fleecing itself needs), and one real q35
// VM with Proxmox-style drive names. Views are read with libnbd's nbdcopy.

import { spawn } from "node:child_process";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  cleanupLeftovers,
  type FleecingFailure,
  type FleecingSession,
  type FreezeOptions,
  freezeDrives,
  type LeftoverRecord,
  QemuSourceError,
  QmpClient,
} from "../src/sources/qemu/index.js";
import {
  blockState,
  DISK_SIZE,
  guestWrite,
  makeDisks,
  type QemuProcess,
  readExport,
  sha256,
  startStorageDaemon,
  startVirtualMachine,
} from "./helpers/qemu-guest.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const dir = mkdtempSync(join(tmpdir(), "vmab-fleecing-"));
const scratchDir = join(dir, "scratch");
const runDir = join(dir, "run");
let qsd: QemuProcess & { readonly guestFiles: readonly string[] };
let originals: Buffer[];
const sessions: FleecingSession[] = [];

beforeAll(async () => {
  mkdirSync(scratchDir);
  mkdirSync(runDir, { mode: 0o700 });
  const disks = makeDisks(dir, 2);
  originals = disks.map((path) => readFileSync(path));
  qsd = await startStorageDaemon(dir, disks, { fuseGuests: true });
});

afterAll(async () => {
  for (const session of sessions) await session.teardown();
  await qsd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function options(tag: string, drives: readonly string[] = ["live0", "live1"]): FreezeOptions {
  return {
    qmpSocket: qsd.qmpSocket,
    drives: drives.map((drive) => ({ drive })),
    scratchDir,
    exportSocketPath: join(runDir, `${tag}.sock`),
    tag,
  };
}

async function freeze(freezeOptions: FreezeOptions): Promise<FleecingSession> {
  const session = await freezeDrives(freezeOptions);
  sessions.push(session);
  return session;
}

async function refusal(promise: Promise<unknown>): Promise<QemuSourceError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(QemuSourceError);
  return error as QemuSourceError;
}

/** Runs `command` on the test's own monitor (the session holds the other). */
async function onTestMonitor<T>(qemu: QemuProcess, command: string, args?: Record<string, unknown>): Promise<T> {
  const client = await QmpClient.connect(qemu.testQmpSocket);
  try {
    return await client.execute<T>(command, args);
  } finally {
    client.close();
  }
}

describe("freezeDrives on a qemu-storage-daemon", () => {
  it("exports both drives as they were at the freeze while the guest overwrites start, middle and end", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const session = await freeze(options("consist"));
    const failures: FleecingFailure[] = [];
    session.onFailure((failure) => failures.push(failure));
    expect(session.drives.map((drive) => [drive.drive, drive.liveNode, drive.size])).toEqual([
      ["live0", "live0", DISK_SIZE],
      ["live1", "live1", DISK_SIZE],
    ]);
    expect(await session.scratchBytes("live0")).toBe(0);
    // The state check below can tell: fleecing changes what it compares.
    expect(await blockState(qsd.testQmpSocket)).not.toBe(before);

    const chunk = 64 * KiB;
    const offsets = [0, DISK_SIZE / 2 - chunk / 2, DISK_SIZE - chunk];
    for (const round of [0, 1]) {
      qsd.guestFiles.forEach((guestFile, index) => {
        for (const offset of offsets) guestWrite(guestFile, offset, Buffer.alloc(chunk, 0xa0 + round * 16 + index));
      });
      session.drives.forEach((drive, index) => {
        const view = readExport(drive.socketPath, drive.exportName, join(dir, `view${index}-${round}.raw`));
        expect(sha256(view), `${drive.drive} after round ${round}`).toBe(sha256(originals[index]!));
      });
    }
    for (const [index, path] of qsd.drivePaths.entries()) {
      const live = readFileSync(path);
      for (const offset of offsets) {
        expect(live.subarray(offset, offset + chunk).equals(Buffer.alloc(chunk, 0xb0 + index))).toBe(true);
      }
      expect(await session.scratchBytes(`live${index}`)).toBeGreaterThanOrEqual(offsets.length * chunk);
    }

    expect(await session.teardown()).toEqual({ problems: [] });
    expect(await session.teardown()).toEqual({ problems: [] });
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
    expect(readdirSync(scratchDir)).toEqual([]);
    expect(existsSync(session.drives[0]!.socketPath)).toBe(false);
    expect(failures).toEqual([]);
    expect(await session.scratchBytes("live0")).toBe(0);
  });

  it("refuses an unknown drive with DRIVE_NOT_FOUND, naming it and the known names, and changes nothing", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const error = await refusal(freezeDrives(options("unknown", ["live0", "drive-scsi7"])));
    expect(error.reason).toBe("DRIVE_NOT_FOUND");
    expect(error.drive).toBe("drive-scsi7");
    expect(error.message).toContain('"drive-scsi7"');
    expect(error.message).toContain("nodes file0, file1, live0, live1");
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
    expect(readdirSync(scratchDir)).toEqual([]);
  });

  it("refuses a QMP socket nobody listens on with QMP_UNREACHABLE", async () => {
    const error = await refusal(freezeDrives({ ...options("nosock"), qmpSocket: join(dir, "no-qemu.sock") }));
    expect(error.reason).toBe("QMP_UNREACHABLE");
    expect(error.message).toContain("no-qemu.sock");
  });

  it("refuses a tag that cannot fit QEMU's node names before connecting", async () => {
    const error = await refusal(freezeDrives(options("not a tag!")));
    expect(error.reason).toBe("INVALID_OPTIONS");
  });

  it("reports NBD_SERVER_BUSY when QEMU already runs an NBD server, and leaves that server alone", async () => {
    const otherSocket = join(dir, "other-nbd.sock");
    await onTestMonitor(qsd, "nbd-server-start", { addr: { type: "unix", data: { path: otherSocket } } });
    try {
      const before = await blockState(qsd.testQmpSocket);
      const error = await refusal(freezeDrives(options("busy")));
      expect(error.reason).toBe("NBD_SERVER_BUSY");
      expect(error.qmpDesc).toMatch(/already running/);
      expect(await blockState(qsd.testQmpSocket)).toBe(before);
      expect(readdirSync(scratchDir)).toEqual([]);
      expect(existsSync(otherSocket)).toBe(true);
    } finally {
      // Fails (and fails the test) if fleecing had stopped the other server.
      await onTestMonitor(qsd, "nbd-server-stop");
    }
  });

  it("undoes the NBD server it started when a later step fails (no scratch directory)", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const error = await refusal(freezeDrives({ ...options("noscr"), scratchDir: join(dir, "missing-dir") }));
    expect(error.reason).toBe("SCRATCH_CREATE_FAILED");
    expect(error.drive).toBe("live0");
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
    // The server it started is gone: a new one can start.
    await onTestMonitor(qsd, "nbd-server-start", { addr: { type: "unix", data: { path: join(dir, "probe.sock") } } });
    await onTestMonitor(qsd, "nbd-server-stop");
  });

  it("never overwrites a scratch file it did not create, and undoes the overlay it had already attached", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const foreign = join(scratchDir, "vmab-exist-scratch1.qcow2");
    writeFileSync(foreign, "another job's overlay");
    try {
      const error = await refusal(freezeDrives(options("exist")));
      expect(error.reason).toBe("SCRATCH_CREATE_FAILED");
      expect(error.drive).toBe("live1");
      expect(error.message).toContain("EEXIST");
      expect(readFileSync(foreign, "utf8")).toBe("another job's overlay");
      expect(readdirSync(scratchDir)).toEqual(["vmab-exist-scratch1.qcow2"]);
      expect(await blockState(qsd.testQmpSocket)).toBe(before);
    } finally {
      rmSync(foreign);
    }
  });

  it("reports a fleecing job that ends without teardown as BLOCK_JOB_FAILED naming the drive", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const session = await freeze(options("jobend"));
    const failed = new Promise<FleecingFailure>((resolve) => session.onFailure(resolve));
    await onTestMonitor(qsd, "block-job-cancel", { device: session.drives[1]!.jobId, force: true });
    const failure = await failed;
    expect(failure.kind).toBe("BLOCK_JOB_FAILED");
    expect(failure.drive).toBe("live1");
    expect(await session.teardown()).toEqual({ problems: [] });
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
  });

  it("cleans up after a daemon killed with -9 mid-job, from the leftover record alone", async () => {
    const before = await blockState(qsd.testQmpSocket);
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "test/helpers/abandon-fleecing.ts", JSON.stringify(options("killed"))],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    const line = await new Promise<string>((resolve, reject) => {
      let out = "";
      child.stdout.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes("\n")) resolve(out.slice(0, out.indexOf("\n")));
      });
      child.once("exit", (code) => reject(new Error(`abandon-fleecing exited with ${code} before freezing`)));
    });
    const { leftovers } = JSON.parse(line) as { leftovers: LeftoverRecord };
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    expect(await blockState(qsd.testQmpSocket)).not.toBe(before);
    expect(readdirSync(scratchDir).sort()).toEqual(["vmab-killed-scratch0.qcow2", "vmab-killed-scratch1.qcow2"]);

    const result = await cleanupLeftovers(leftovers);
    expect(result.qemuReached).toBe(true);
    expect(result.problems).toEqual([]);
    expect(result.nbdServerStopped).toBe(true);
    expect([...result.removed.nodes].sort()).toEqual(["vmab-killed-scratch0", "vmab-killed-scratch1"]);
    expect(result.removed.jobs.length).toBe(2);
    expect(result.removed.exports.length).toBe(2);
    expect(await blockState(qsd.testQmpSocket)).toBe(before);
    expect(readdirSync(scratchDir)).toEqual([]);

    const again = await cleanupLeftovers(leftovers);
    expect(again).toEqual({
      qemuReached: true,
      removed: { exports: [], jobs: [], nodes: [] },
      nbdServerStopped: false,
      problems: [],
    });
  });

  it("fails the guest's write, not the snapshot, when the scratch space is full (QEMU 7.2 blockdev-backup)", async (context) => {
    const tinyDir = join(dir, "tiny");
    mkdirSync(tinyDir);
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=512k", "tmpfs", tinyDir], { stdio: "ignore" });
    } catch {
      context.skip("cannot mount a tmpfs here (needs root)");
    }
    try {
      const before = await blockState(qsd.testQmpSocket);
      const session = await freeze({ ...options("full", ["live0"]), scratchDir: tinyDir });
      const failures: FleecingFailure[] = [];
      session.onFailure((failure) => failures.push(failure));
      const live = readFileSync(qsd.drivePaths[0]!);
      expect(() => guestWrite(qsd.guestFiles[0]!, 0, Buffer.alloc(MiB, 0xee))).toThrow(/ENOSPC|no space/i);
      // The copy-before-write failed, so QEMU refused the guest's write: the live disk kept its data...
      expect(readFileSync(qsd.drivePaths[0]!).subarray(0, MiB).equals(live.subarray(0, MiB))).toBe(true);
      // ...and the view still reads as at the freeze; the job itself did not fail.
      const drive = session.drives[0]!;
      expect(sha256(readExport(drive.socketPath, drive.exportName, join(dir, "view-full.raw")))).toBe(sha256(live));
      expect(failures.filter((failure) => failure.kind === "BLOCK_JOB_FAILED")).toEqual([]);
      expect(await session.teardown()).toEqual({ problems: [] });
      expect(await blockState(qsd.testQmpSocket)).toBe(before);
      expect(readdirSync(tinyDir)).toEqual([]);
    } finally {
      execFileSync("umount", [tinyDir]);
    }
  });
});

describe("freezeDrives when QEMU dies mid-session", () => {
  it("reports QEMU_GONE, tears down without hanging and deletes the scratch files", async () => {
    const doomedDir = mkdtempSync(join(dir, "doomed-"));
    const doomed = await startStorageDaemon(doomedDir, makeDisks(doomedDir, 1));
    try {
      const session = await freeze({ ...options("gone", ["live0"]), qmpSocket: doomed.qmpSocket });
      const failed = new Promise<FleecingFailure>((resolve) => session.onFailure(resolve));
      expect(readdirSync(scratchDir)).toEqual(["vmab-gone-scratch0.qcow2"]);
      doomed.child.kill("SIGKILL");
      const failure = await failed;
      expect(failure.kind).toBe("QEMU_GONE");
      const started = Date.now();
      expect(await session.teardown()).toEqual({ problems: [] });
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(readdirSync(scratchDir)).toEqual([]);
      const cleanup = await cleanupLeftovers(session.leftovers);
      expect(cleanup.qemuReached).toBe(false);
      expect(cleanup.problems).toEqual([]);
    } finally {
      await doomed.stop();
    }
  });
});

describe("freezeDrives when QEMU stops answering mid-session", () => {
  it("ends teardown within its timeouts, reports what is left, and cleanupLeftovers finishes the job later", async () => {
    const hungDir = mkdtempSync(join(dir, "hung-"));
    const hung = await startStorageDaemon(hungDir, makeDisks(hungDir, 1));
    try {
      const before = await blockState(hung.testQmpSocket);
      const session = await freeze({
        ...options("hung", ["live0"]),
        qmpSocket: hung.qmpSocket,
        timeouts: { commandMs: 300, teardownMs: 1_000 },
      });
      hung.child.kill("SIGSTOP");
      const started = Date.now();
      const result = await session.teardown();
      const elapsed = Date.now() - started;
      hung.child.kill("SIGCONT");
      expect(elapsed).toBeLessThan(3_000);
      expect(result.problems.length).toBeGreaterThan(0);
      expect(result.problems[0]).toMatch(/did not answer/);
      expect(result.problems.slice(1).every((problem) => /stopped answering/.test(problem))).toBe(true);
      expect(readdirSync(scratchDir)).toEqual([]);
      expect(await blockState(hung.testQmpSocket)).not.toBe(before);
      // Kept: it tells the later cleanup that QEMU's NBD server is this job's to stop.
      expect(existsSync(session.leftovers.exportSocketPath ?? "")).toBe(true);

      const cleanup = await cleanupLeftovers(session.leftovers);
      expect(cleanup.problems).toEqual([]);
      expect(cleanup.removed.nodes).toEqual(["vmab-hung-scratch0"]);
      expect(cleanup.nbdServerStopped).toBe(true);
      expect(await blockState(hung.testQmpSocket)).toBe(before);
      // The NBD server is free for the next job.
      const again = await freeze({ ...options("again", ["live0"]), qmpSocket: hung.qmpSocket });
      expect((await again.teardown()).problems).toEqual([]);
      expect(await blockState(hung.testQmpSocket)).toBe(before);
    } finally {
      hung.child.kill("SIGCONT");
      await hung.stop();
    }
  });
});

describe("freezeDrives on a real qemu-system-x86_64 with Proxmox-style drives", () => {
  let vm: QemuProcess;
  let vmDisks: Buffer[];
  const vmDir = join(dir, "vm");

  beforeAll(async () => {
    mkdirSync(vmDir);
    const paths = makeDisks(vmDir, 2);
    vmDisks = paths.map((path) => readFileSync(path));
    vm = await startVirtualMachine(vmDir, paths);
  });

  afterAll(async () => {
    await vm?.stop();
  });

  it("freezes drive-scsi0 and drive-scsi1 by BlockBackend name while HMP qemu-io writes to them", async () => {
    const before = await blockState(vm.testQmpSocket);
    const session = await freeze({ ...options("vm", ["drive-scsi0", "drive-scsi1"]), qmpSocket: vm.qmpSocket });
    expect(session.drives.map((drive) => drive.device)).toEqual(["drive-scsi0", "drive-scsi1"]);
    // QEMU named the nodes behind -drive itself.
    expect(session.drives.every((drive) => drive.liveNode.startsWith("#block"))).toBe(true);

    const writes = [
      'qemu-io drive-scsi0 "write -P 0xcd 0 1M"',
      `qemu-io drive-scsi1 "write -P 0xce ${DISK_SIZE - MiB} 1M"`,
    ];
    for (const commandLine of writes) {
      const output = await onTestMonitor<string>(vm, "human-monitor-command", { "command-line": commandLine });
      // QEMU 7.2 returns no text for HMP qemu-io; the live file below shows the write happened.
      expect(output).not.toMatch(/error|fail/i);
    }
    session.drives.forEach((drive, index) => {
      const view = readExport(drive.socketPath, drive.exportName, join(vmDir, `view${index}.raw`));
      expect(sha256(view), drive.drive).toBe(sha256(vmDisks[index]!));
    });
    expect(readFileSync(vm.drivePaths[0]!).subarray(0, MiB).equals(Buffer.alloc(MiB, 0xcd))).toBe(true);
    expect(
      readFileSync(vm.drivePaths[1]!)
        .subarray(DISK_SIZE - MiB)
        .equals(Buffer.alloc(MiB, 0xce)),
    ).toBe(true);

    expect(await session.teardown()).toEqual({ problems: [] });
    expect(await blockState(vm.testQmpSocket)).toBe(before);
    expect(readdirSync(scratchDir)).toEqual([]);
  });
});
