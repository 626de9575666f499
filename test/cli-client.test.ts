// The client side of the CLI: the argument parsers and formatters as units,
// then `vmabackup backup | status | watch | cancel | list | speed | delete`
// as real child processes against a real server on 127.0.0.1.
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { parse as parseUuid } from "uuid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BackupState,
  BackupStatusSchema,
  DeviceStatusSchema,
  ImageFormat,
  SourceKind,
  type BackupStatus,
  type DeviceStatus,
} from "../gen/vmabackup/v1/backup_pb.js";
import { listBackups } from "../src/cli/client-list.js";
import { formatBarLine } from "../src/cli/client-progress.js";
import { escapeControls } from "../src/cli/escape-controls.js";
import { formatStatusJson } from "../src/cli/format-json.js";
import { formatBytes, formatDuration, formatPercent } from "../src/cli/format-size.js";
import { formatStatusLine, formatStatusSummary } from "../src/cli/format-status.js";
import { parseConfigArgument } from "../src/cli/parse-named-path.js";
import {
  devicesInOrder,
  parseDeviceArgument,
  parseImageArgument,
  parseNbdArgument,
  parseQemuArgument,
} from "../src/cli/parse-device-source.js";
import { ArgumentSyntaxError } from "../src/cli/parse-error.js";
import { parseServerAddress } from "../src/cli/parse-server-address.js";
import { parseSize } from "../src/cli/parse-size.js";
import { startTestServer, type TestServer } from "./helpers/test-server.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

describe("parseSize", () => {
  it.each([
    ["0", 0],
    ["4096", 4096],
    ["4096B", 4096],
    ["512K", 512 * KiB],
    ["512k", 512 * KiB],
    ["50M", 50 * MiB],
    ["50MiB", 50 * MiB],
    ["1.5G", 1.5 * GiB],
    ["1.5 GiB", 1.5 * GiB],
    [".5M", 512 * KiB],
    ["2T", 2 * 1024 * GiB],
    [" 7M ", 7 * MiB],
    // Fractions round down to whole bytes.
    ["1.1K", 1126],
  ])("%j is %d bytes", (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each([
    ["12Q", /unknown unit "Q"/],
    ["50MB", /unknown unit "MB"/],
    ["", /expected a number/],
    ["M", /expected a number/],
    ["-1", /expected a number/],
    ["1e6", /expected a number/],
    ["1.5", /whole number of bytes/],
    ["0.0001K", /less than one byte/],
    ["9999999999T", /too large/],
  ])("refuses %j", (text, message) => {
    expect(() => parseSize(text)).toThrow(ArgumentSyntaxError);
    expect(() => parseSize(text)).toThrow(message);
  });

  it("reads every whole amount of every unit exactly", () => {
    const units = fc.constantFrom(["", 1], ["K", KiB], ["M", MiB], ["G", GiB], ["TiB", 1024 * GiB]);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 8191 }), units, (amount, [unit, multiplier]) => {
        expect(parseSize(`${amount}${unit as string}`)).toBe(amount * (multiplier as number));
      }),
    );
  });
});

describe("parseDeviceArgument and parseConfigArgument", () => {
  it("makes a relative device path absolute against the given directory", () => {
    expect(parseDeviceArgument("drive-scsi0=disks/a.raw", "/srv").device).toEqual({
      name: "drive-scsi0",
      path: "/srv/disks/a.raw",
    });
    expect(parseDeviceArgument("d=/abs/b.raw", "/srv").device).toEqual({ name: "d", path: "/abs/b.raw" });
    // Only the first "=" separates: paths may contain more.
    expect(parseDeviceArgument("d=/x/a=b.raw", "/srv").device).toEqual({ name: "d", path: "/x/a=b.raw" });
  });

  it.each(["disk.raw", "=disk.raw", "drive-scsi0=", ""])("refuses the device %j", (text) => {
    expect(() => parseDeviceArgument(text, "/srv")).toThrow(ArgumentSyntaxError);
  });

  it("parses --image NAME=PATH:FORMAT at the last colon, with the format checked here", () => {
    expect(parseImageArgument("d=vm:1/disk.qcow2:qcow2", "/srv").device).toEqual({
      name: "d",
      source: { case: "image", value: { path: "/srv/vm:1/disk.qcow2", format: ImageFormat.QCOW2 } },
    });
    expect(parseImageArgument("d=/i/a.vmdk:VMDK", "/srv").device).toMatchObject({
      source: { value: { format: ImageFormat.VMDK } },
    });
    expect(() => parseImageArgument("d=/i/a.img:qcow3", "/srv")).toThrow(
      /unknown image format "qcow3"; expected one of raw, qcow2, vmdk, vdi, vhdx, qed/,
    );
  });

  it.each(["d=/i/a.qcow2", "d=/i/a.qcow2:", "d=:qcow2", "=/a:raw", "d"])("refuses the image %j", (text) => {
    expect(() => parseImageArgument(text, "/srv")).toThrow(ArgumentSyntaxError);
  });

  it("parses --nbd NAME=URI, the URI whole", () => {
    expect(parseNbdArgument("d=nbd+unix:///e?socket=/run/a=b.sock").device).toEqual({
      name: "d",
      source: { case: "nbd", value: { uri: "nbd+unix:///e?socket=/run/a=b.sock" } },
    });
    expect(() => parseNbdArgument("d=http://host/e")).toThrow(/starts nbd:\/\/ or nbd\+unix:\/\//);
    expect(() => parseNbdArgument("nbd://host/e")).toThrow(ArgumentSyntaxError);
  });

  it("parses --qemu NAME=QMP_SOCKET:DRIVE at the last colon", () => {
    expect(parseQemuArgument("d=run/q:1.qmp:drive-scsi0", "/srv").device).toEqual({
      name: "d",
      source: { case: "qemu", value: { qmpSocket: "/srv/run/q:1.qmp", drive: "drive-scsi0" } },
    });
    expect(() => parseQemuArgument("d=/run/q.qmp", "/srv")).toThrow(ArgumentSyntaxError);
    expect(() => parseQemuArgument("d=/run/q.qmp:", "/srv")).toThrow(ArgumentSyntaxError);
  });

  it("keeps devices in command-line order across the four options", () => {
    const a = parseImageArgument("a=/i/a.qcow2:qcow2", "/");
    const b = parseDeviceArgument("b=/i/b.raw", "/");
    const c = parseQemuArgument("c=/q.qmp:drive-c", "/");
    const d = parseNbdArgument("d=nbd://h/e");
    expect(devicesInOrder([b], [a], [d], [c]).map((device) => device.name)).toEqual(["a", "b", "c", "d"]);
  });

  it("names a config by its base name unless a name is given", () => {
    expect(parseConfigArgument("etc/qemu-server.conf")).toEqual({
      name: "qemu-server.conf",
      path: "etc/qemu-server.conf",
    });
    expect(parseConfigArgument("vm.conf=etc/101.conf")).toEqual({ name: "vm.conf", path: "etc/101.conf" });
  });

  it.each(["", "/", "=a", "a="])("refuses the config %j", (text) => {
    expect(() => parseConfigArgument(text)).toThrow(ArgumentSyntaxError);
  });
});

describe("escapeControls", () => {
  it("shows C0, DEL, C1, line separators and bidi controls as escapes, and leaves other text alone", () => {
    expect(escapeControls("a\x1b[31mb\x07c\x7fd\u009be\u2028f\u202eg\tnewline\n")).toBe(
      "a\\x1b[31mb\\x07c\\x7fd\\x9be\\u2028f\\u202eg\\x09newline\\x0a",
    );
    expect(escapeControls("drive-scsi0 ünïcode 💾 \\x1b")).toBe("drive-scsi0 ünïcode 💾 \\x1b");
  });
});

describe("parseServerAddress", () => {
  it.each(["127.0.0.1:50051", "localhost:1", "backup.example.org:65535", "[::1]:50051", "unix:/run/vmabackup.sock"])(
    "accepts %j",
    (text) => {
      expect(parseServerAddress(text)).toBe(text);
    },
  );

  it.each(["localhost", "127.0.0.1:", ":50051", "host:0", "host:65536", "host:port", "a b:1", "::1:50051"])(
    "refuses %j",
    (text) => {
      expect(() => parseServerAddress(text)).toThrow(ArgumentSyntaxError);
    },
  );
});

describe("status formatting", () => {
  const start = new Date("2025-01-02T03:04:05.000Z");
  const done = create(BackupStatusSchema, {
    uuid: "0b6c3a52-8a40-4b0e-9c55-0123456789ab",
    state: BackupState.DONE,
    backupFile: "/var/backups/vm-101.vma",
    totalBytes: BigInt(2 * GiB),
    transferredBytes: BigInt(2 * GiB),
    zeroBytes: BigInt(GiB / 2),
    speedLimit: BigInt(50 * MiB),
    startTime: timestampFromDate(start),
    endTime: timestampFromDate(new Date(start.getTime() + 4000)),
    devices: [
      { name: "drive-scsi0", devId: 1, size: BigInt(GiB), transferredBytes: BigInt(GiB), zeroBytes: 0n },
      {
        name: "drive-scsi1",
        devId: 2,
        size: BigInt(GiB),
        transferredBytes: BigInt(GiB),
        zeroBytes: BigInt(GiB / 2),
      },
    ],
  });

  it("formats sizes, shares and durations", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(BigInt(3 * GiB))).toBe("3.0 GiB");
    expect(formatPercent(1, 4)).toBe("25.0%");
    expect(formatPercent(1n, 0n)).toBe("-");
    expect(formatDuration(250)).toBe("250 ms");
    expect(formatDuration(3210)).toBe("3.2 s");
    expect(formatDuration(245_000)).toBe("4 min 05 s");
  });

  it("puts state, progress, rate, zero share and outcome on one line", () => {
    expect(formatStatusLine(done, new Date())).toBe(
      "0b6c3a52-8a40-4b0e-9c55-0123456789ab DONE  100.0%  2.0 GiB / 2.0 GiB  512.0 MiB/s  zero 25.0%" +
        "  in 4.0 s  /var/backups/vm-101.vma",
    );
    const failed = create(BackupStatusSchema, {
      ...done,
      state: BackupState.ERROR,
      transferredBytes: BigInt(GiB),
      zeroBytes: 0n,
      errorMessage: "drive-scsi1: read failed at offset 1073741824",
    });
    expect(formatStatusLine(failed, new Date())).toMatch(
      / ERROR {2}50\.0% {2}1\.0 GiB \/ 2\.0 GiB .* in 4\.0 s {2}drive-scsi1: read failed at offset 1073741824$/,
    );
  });

  it("shows the rate and ETA the server measured for an active job", () => {
    const active = create(BackupStatusSchema, {
      ...done,
      state: BackupState.ACTIVE,
      transferredBytes: BigInt(GiB),
      endTime: undefined,
      rate: BigInt(256 * MiB),
      eta: durationFromMs(4000),
    });
    // The server's figures, whatever the average since the start would say.
    const line = formatStatusLine(active, new Date(start.getTime() + 2000));
    expect(line).toBe(
      "0b6c3a52-8a40-4b0e-9c55-0123456789ab ACTIVE  50.0%  1.0 GiB / 2.0 GiB  256.0 MiB/s  ETA 4.0 s  zero 50.0%",
    );
    // No rate measured yet (the first second of a job): say so, not "0 B/s".
    const unknown = create(BackupStatusSchema, { ...active, rate: 0n, eta: undefined });
    expect(formatStatusLine(unknown, new Date())).toContain("  - B/s  ETA -  zero 50.0%");
  });

  it("fits a progress bar line into the terminal width", () => {
    const active = create(BackupStatusSchema, {
      ...done,
      state: BackupState.ACTIVE,
      transferredBytes: BigInt(GiB / 2),
      zeroBytes: 0n,
      endTime: undefined,
      rate: BigInt(256 * MiB),
      eta: durationFromMs(6000),
    });
    const now = new Date(start.getTime() + 2000);
    // 80 columns: rate and ETA stay, the zero share goes.
    const narrow = formatBarLine(active, 80, now);
    expect(narrow).toMatch(
      /^0b6c3a52 ACTIVE \[█+░+\] 25\.0% {2}512\.0 MiB \/ 2\.0 GiB {2}256\.0 MiB\/s {2}ETA 6\.0 s$/,
    );
    expect(narrow.length).toBeLessThanOrEqual(80);
    const wide = formatBarLine(active, 200, now);
    expect(wide).toContain(`[${"█".repeat(10)}${"░".repeat(30)}]`);
    expect(wide).toMatch(/ {2}ETA 6\.0 s {2}zero 0\.0%$/);
  });

  it("summarises a job with its devices", () => {
    const summary = formatStatusSummary(done, new Date());
    expect(summary).toContain("state     DONE");
    expect(summary).toContain("file      /var/backups/vm-101.vma");
    expect(summary).toContain("rate      512.0 MiB/s average over 4.0 s (limit 50.0 MiB/s)");
    expect(summary).not.toContain("eta");
    expect(summary).toContain("started   2025-01-02T03:04:05.000Z");
    expect(summary).toMatch(/\n {4}2 {2}drive-scsi1 +100\.0% {2}1\.0 GiB of 1\.0 GiB {2}zero 50\.0%$/);
  });

  it("shows where each device is read from, and a qemu source's scratch bytes", () => {
    const [first, second] = done.devices as [DeviceStatus, DeviceStatus];
    const sourced = create(BackupStatusSchema, {
      ...done,
      devices: [
        create(DeviceStatusSchema, { ...first, sourceKind: SourceKind.PATH, source: "/images/a.raw" }),
        create(DeviceStatusSchema, {
          ...second,
          sourceKind: SourceKind.QEMU,
          source: "/run/qemu-server/101.qmp:drive-scsi1",
          scratchBytes: BigInt(3 * MiB),
        }),
      ],
    });
    const summary = formatStatusSummary(sourced, new Date());
    expect(summary).toMatch(/ {4}1 {2}drive-scsi0 .* {2}from path \/images\/a\.raw\n/);
    expect(summary).toMatch(
      / {4}2 {2}drive-scsi1 .* {2}from qemu \/run\/qemu-server\/101\.qmp:drive-scsi1 {2}scratch 3\.0 MiB$/,
    );
  });

  it("summarises an active job with the server's rate, its ETA and the request id", () => {
    const active = create(BackupStatusSchema, {
      ...done,
      state: BackupState.ACTIVE,
      endTime: undefined,
      rate: BigInt(40 * MiB),
      eta: durationFromMs(245_000),
      requestId: "nightly-101",
    });
    const summary = formatStatusSummary(active, new Date());
    expect(summary).toContain("rate      40.0 MiB/s (limit 50.0 MiB/s)\n");
    expect(summary).toContain("eta       4 min 05 s\n");
    expect(summary).toContain("request   nightly-101\n");
    const unknown = formatStatusSummary(create(BackupStatusSchema, { ...active, eta: undefined }), new Date());
    expect(unknown).toContain("eta       unknown\n");
  });

  it("writes JSON with the proto JSON names, defaults included", () => {
    const json = JSON.parse(formatStatusJson(done)) as Record<string, unknown>;
    expect(json).toMatchObject({
      uuid: done.uuid,
      state: "BACKUP_STATE_DONE",
      errorMessage: "",
      backupFile: "/var/backups/vm-101.vma",
      totalBytes: String(2 * GiB),
      zeroBytes: String(GiB / 2),
      startTime: "2025-01-02T03:04:05Z",
      devices: [
        { name: "drive-scsi0", devId: 1, zeroBytes: "0" },
        { name: "drive-scsi1", devId: 2 },
      ],
    });
  });
});

const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const BIN = path.join(REPO_ROOT, "bin", "vmabackup.js");
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface RunningCli {
  /** Resolves with the first stdout line matching `pattern`. */
  waitForLine(pattern: RegExp): Promise<string>;
  interrupt(): void;
  readonly result: Promise<CliResult>;
}

/** Environment without VMABACKUP_SERVER, so only what a test passes counts. */
function cliEnvironment(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  if (extra.VMABACKUP_SERVER === undefined) delete env.VMABACKUP_SERVER;
  return env;
}

/** Starts `vmabackup ARGS` as a child process, from the repo root unless told otherwise. */
function startCli(args: string[], options: { cwd?: string; env?: Record<string, string> } = {}): RunningCli {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: options.cwd ?? REPO_ROOT,
    env: cliEnvironment(options.env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const lineWaiters: Array<{ pattern: RegExp; resolve: (line: string) => void }> = [];
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
    for (const waiter of [...lineWaiters]) {
      const line = stdout.split("\n").find((candidate) => waiter.pattern.test(candidate));
      if (line !== undefined) {
        lineWaiters.splice(lineWaiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const result = new Promise<CliResult>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
  return {
    waitForLine: (pattern) =>
      new Promise((resolve, reject) => {
        lineWaiters.push({ pattern, resolve });
        void result.then(({ stdout: out, stderr: err }) =>
          reject(new Error(`exited without a line matching ${pattern}:\n${out}\n${err}`)),
        );
      }),
    interrupt: () => child.kill("SIGINT"),
    result,
  };
}

function runCli(args: string[], options: { cwd?: string; env?: Record<string, string> } = {}): Promise<CliResult> {
  return startCli(args, options).result;
}

function stdoutLines(result: CliResult): string[] {
  return result.stdout.split("\n").filter((line) => line !== "");
}

/** `blocks` 4 KiB blocks, every `zeroEvery`-th of them zero, the rest random. */
function mixedImage(blocks: number, zeroEvery: number, tailBytes = 0): Buffer {
  const image = randomBytes(blocks * 4096 + tailBytes);
  for (let block = 0; block < blocks; block += zeroEvery) image.fill(0, block * 4096, (block + 1) * 4096);
  return image;
}

describe("vmabackup backup | status | watch | cancel against a real server", () => {
  let server: TestServer;
  let diskA: string;
  let slowDisk: string;

  beforeAll(async () => {
    server = await startTestServer({ progressIntervalMs: 50 });
    // Sizes that are not multiples of 64 KiB, with zero and non-zero blocks.
    diskA = await server.writeSource("disk-a.raw", mixedImage(300, 3, 512));
    await server.writeSource("disk-b.raw", mixedImage(70, 2));
    // Takes about 16 s at --speed 512K: long enough to watch and cancel.
    slowDisk = await server.writeSource("slow.raw", randomBytes(8 * MiB));
    await writeFile(path.join(server.sourceDir, "qemu-server.conf"), "memory: 2048\ncores: 2\n");
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("backs up two devices with --watch and exits 0 once the archive is complete", async () => {
    // Run from the source dir so that the relative device path must be made absolute.
    const result = await runCli(
      [
        "backup",
        "--server",
        server.address,
        "--file",
        "vm-101.vma",
        "--device",
        "drive-scsi0=disk-a.raw",
        "--device",
        `drive-scsi1=${path.join(server.sourceDir, "disk-b.raw")}`,
        "--config",
        "qemu-server.conf",
        "--config",
        "fw.conf=qemu-server.conf",
        "--watch",
      ],
      { cwd: server.sourceDir },
    );
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const lines = stdoutLines(result);
    const uuid = lines[0] ?? "";
    expect(uuid).toMatch(UUID_PATTERN);
    const archive = path.join(server.backupDir, "vm-101.vma");
    expect(lines.at(-1)).toMatch(new RegExp(`^${uuid} DONE {2}100\\.0% .* zero \\d+\\.\\d% {2}in .* {2}${archive}$`));
    for (const line of lines.slice(1)) expect(line).toMatch(new RegExp(`^${uuid} (ACTIVE|DONE) `));

    const header = await readFile(archive);
    expect(header.subarray(0, 4)).toEqual(Buffer.from("VMA\0", "latin1"));
    expect(header.subarray(8, 24)).toEqual(Buffer.from(parseUuid(uuid)));
    // Both configs were read by the client and stored under their names.
    expect(header.includes(Buffer.from("qemu-server.conf\0"))).toBe(true);
    expect(header.includes(Buffer.from("fw.conf\0"))).toBe(true);
    expect(header.includes(Buffer.from("memory: 2048"))).toBe(true);

    const query = await server.client.queryBackup({ uuid });
    expect(query.status?.devices.map((device) => device.name)).toEqual(["drive-scsi0", "drive-scsi1"]);
    expect(query.status?.zeroBytes).toBe(BigInt((100 + 35) * 4096));
  });

  it("shows the latest job's status as text and a given job's as proto JSON", async () => {
    const [text, latestJson] = await Promise.all([
      // The server address from the environment instead of --server.
      runCli(["status"], { env: { VMABACKUP_SERVER: server.address } }),
      runCli(["status", "--server", server.address, "--json"]),
    ]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^uuid {6}[0-9a-f-]{36}\nstate {5}DONE\nfile {6}.*vm-101\.vma\n/);
    expect(text.stdout).toContain("progress  100.0%");
    expect(text.stdout).toMatch(/\n {4}1 {2}drive-scsi0 .*\n {4}2 {2}drive-scsi1 /);

    expect(latestJson.code).toBe(0);
    const latest = JSON.parse(latestJson.stdout) as Record<string, unknown>;
    const byUuid = await runCli(["status", String(latest.uuid), "--server", server.address, "--json"]);
    expect(byUuid.code).toBe(0);
    const status = JSON.parse(byUuid.stdout) as Record<string, unknown>;
    expect(status).toEqual(latest);
    expect(status).toMatchObject({
      state: "BACKUP_STATE_DONE",
      errorMessage: "",
      backupFile: path.join(server.backupDir, "vm-101.vma"),
      format: "BACKUP_FORMAT_VMA",
      totalBytes: String(300 * 4096 + 512 + 70 * 4096),
      transferredBytes: String(300 * 4096 + 512 + 70 * 4096),
      zeroBytes: String((100 + 35) * 4096),
      speedLimit: "0",
      devices: [
        { name: "drive-scsi0", devId: 1, size: String(300 * 4096 + 512) },
        { name: "drive-scsi1", devId: 2, size: String(70 * 4096) },
      ],
    });
    expect(typeof status.startTime).toBe("string");
    expect(typeof status.endTime).toBe("string");
  });

  it("prints one line, or one JSON object, per update when watching", async () => {
    const { status } = await server.client.queryBackup({ uuid: "" });
    const uuid = status?.uuid ?? "";
    const [lines, json] = await Promise.all([
      runCli(["watch", uuid, "--server", server.address]),
      runCli(["watch", uuid, "--server", server.address, "--json"]),
    ]);
    // A finished job: the stream opens with its terminal status and ends.
    expect(lines.code).toBe(0);
    expect(stdoutLines(lines)).toEqual([expect.stringMatching(new RegExp(`^${uuid} DONE {2}100\\.0% `))]);
    expect(json.code).toBe(0);
    expect(stdoutLines(json).map((line) => JSON.parse(line) as unknown)).toEqual([
      expect.objectContaining({ uuid, state: "BACKUP_STATE_DONE" }),
    ]);
  });

  it("ends a watch on Ctrl-C without ending the job, and cancels a throttled job", async () => {
    const started = await runCli([
      "backup",
      "--server",
      server.address,
      "--file",
      "slow.vma",
      "--device",
      `drive-scsi0=${slowDisk}`,
      "--speed",
      "512K",
      "--json",
    ]);
    expect(started.code).toBe(0);
    const status = JSON.parse(started.stdout) as { uuid: string; state: string; speedLimit: string };
    expect(status).toMatchObject({ state: "BACKUP_STATE_ACTIVE", speedLimit: String(512 * KiB) });

    // Ctrl-C ends the watch (exit 130) while the job goes on.
    const everyJob = startCli(["watch", "--server", server.address]);
    await everyJob.waitForLine(new RegExp(`^${status.uuid} ACTIVE `));
    everyJob.interrupt();
    const interrupted = await everyJob.result;
    expect(interrupted.code).toBe(130);
    expect(interrupted.stderr).toContain("watch stopped");
    expect((await server.client.queryBackup({ uuid: status.uuid })).status?.state).toBe(BackupState.ACTIVE);

    // A watch of the job sees it cancelled and exits 1.
    const watch = startCli(["watch", status.uuid, "--server", server.address, "--json"]);
    await watch.waitForLine(/BACKUP_STATE_ACTIVE/);
    const cancelStarted = Date.now();
    const cancel = await runCli(["cancel", status.uuid, "--server", server.address]);
    expect(cancel.code).toBe(0);
    expect(stdoutLines(cancel)).toEqual([expect.stringMatching(new RegExp(`^${status.uuid} CANCELLED `))]);
    const watched = await watch.result;
    // Generous: it includes starting the cancel process on a busy machine.
    expect(Date.now() - cancelStarted).toBeLessThan(5000);
    expect(watched.code).toBe(1);
    const updates = stdoutLines(watched).map((line) => JSON.parse(line) as { state: string });
    expect(updates.at(-1)?.state).toBe("BACKUP_STATE_CANCELLED");
    expect(await readdir(server.backupDir)).not.toContain("slow.vma");

    // Cancelling every active job when none is left.
    const cancelAll = await runCli(["cancel", "--server", server.address]);
    expect(cancelAll.code).toBe(0);
    expect(cancelAll.stdout).toBe("no active backup to cancel\n");
  });

  it("shows a live progress bar on a terminal, replaced by the final line", async () => {
    const command = [process.execPath, BIN, "backup", "--server", server.address, "--file", "tty.vma"]
      .concat(["--device", `drive-scsi0=${diskA}`, "--speed", "2M", "--watch"])
      .map((word) => `'${word}'`)
      .join(" ");
    // script(1) runs the command on a real pseudo-terminal; -e passes its exit code on.
    const child = spawn("script", ["-qec", command, "/dev/null"], {
      cwd: REPO_ROOT,
      env: { ...cliEnvironment(), COLUMNS: "160", LINES: "40" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    expect(code).toBe(0);
    // The bar: its frame, the bytes done so far, the server's rate and ETA
    // and the state, redrawn in place (the zero share only on wide terminals).
    expect(output).toMatch(
      /[0-9a-f]{8} ACTIVE \[[█░]{10,}\] \d+\.\d% {2}[\d.]+ [KM]iB \/ 1\.2 MiB {2}(-|[\d.]+) (B|KiB|MiB)\/s {2}ETA (-|\d+ ms|[\d.]+ s)( {2}zero \d+\.\d%)?\x1b/,
    );
    expect(output).toMatch(/\x1b\[[0-9;]*[GK]/);
    // The final line, after the bar was cleared.
    expect(output).toMatch(/[0-9a-f-]{36} DONE {2}100\.0% {2}1\.2 MiB \/ 1\.2 MiB .*tty\.vma/);
  });

  it("reports usage errors with exit 2", async () => {
    const [device, speed, missing, badServer] = await Promise.all([
      runCli(["backup", "--file", "x.vma", "--device", "disk.raw", "--server", server.address]),
      runCli(["backup", "--file", "x.vma", "--device", `d=${diskA}`, "--speed", "12Q", "--server", server.address]),
      runCli(["backup", "--file", "x.vma", "--server", server.address]),
      runCli(["status", "--server", "localhost"]),
    ]);
    expect(device.code).toBe(2);
    expect(device.stderr).toContain("argument 'disk.raw' is invalid. expected NAME=PATH");
    expect(speed.code).toBe(2);
    expect(speed.stderr).toContain(`argument '12Q' is invalid. unknown unit "Q"`);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("give at least one device: --device, --image, --nbd or --qemu");
    expect(badServer.code).toBe(2);
    expect(badServer.stderr).toContain("expected HOST:PORT");
    expect(await readdir(server.backupDir)).not.toContain("x.vma");
  });

  it("reports gRPC errors as CODE (REASON): message with exit 1", async () => {
    const [notFound, exists, unreachable, noConfig] = await Promise.all([
      runCli(["status", "00000000-0000-4000-8000-000000000000", "--server", server.address]),
      runCli(["backup", "--file", "vm-101.vma", "--device", `d=${diskA}`, "--server", server.address]),
      // Port 1 on loopback: nothing listens there.
      runCli(["watch", "--server", "127.0.0.1:1"]),
      runCli(["backup", "--file", "y.vma", "--device", `d=${diskA}`, "--config", "/nonexistent/vm.conf"]),
    ]);
    expect(notFound.code).toBe(1);
    expect(notFound.stderr).toMatch(/^error: NOT_FOUND \(JOB_NOT_FOUND\): .*00000000-0000-4000-8000-000000000000.*\n$/);
    expect(notFound.stdout).toBe("");
    expect(exists.code).toBe(1);
    expect(exists.stderr).toMatch(/^error: ALREADY_EXISTS \(BACKUP_FILE_EXISTS\): .*vm-101\.vma/);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(
      /^error: UNAVAILABLE: cannot reach vmabackup at 127\.0\.0\.1:1 \(.*ECONNREFUSED/,
    );
    // A local file the client cannot read is a usage error, found before any call.
    expect(noConfig.code).toBe(2);
    expect(noConfig.stderr).toMatch(/^error: cannot read config file "\/nonexistent\/vm\.conf": ENOENT/);
  });

  it("says so when no backup has run yet", async () => {
    const fresh = await startTestServer();
    try {
      const [text, json] = await Promise.all([
        runCli(["status", "--server", fresh.address]),
        runCli(["status", "--server", fresh.address, "--json"]),
      ]);
      expect(text).toEqual({ code: 0, stdout: "no backup has run yet\n", stderr: "" });
      expect(json).toEqual({ code: 0, stdout: "null\n", stderr: "" });
    } finally {
      await fresh.stop();
    }
  });
});

describe("vmabackup list | speed | delete against a real server", () => {
  let server: TestServer;
  let done: BackupStatus;
  let cancelled: BackupStatus;
  let active: BackupStatus;
  /** A second server with no jobs, started by the first test that needs it. */
  let empty: TestServer | undefined;
  async function emptyServer(): Promise<TestServer> {
    empty ??= await startTestServer();
    return empty;
  }

  async function finish(uuid: string): Promise<BackupStatus> {
    let last: BackupStatus | undefined;
    for await (const message of server.client.watchBackup({ uuid })) last = message.status;
    return last!;
  }

  beforeAll(async () => {
    server = await startTestServer({ progressIntervalMs: 50 });
    const started = async (name: string, size: number, speedLimit: number): Promise<BackupStatus> => {
      const source = await server.writeSource(`${name}.raw`, randomBytes(size));
      const response = await server.client.backup({
        backupFile: `${name}.vma`,
        devices: [{ name: "drive-scsi0", path: source }],
        speedLimit: BigInt(speedLimit),
      });
      return response.status!;
    };
    done = await finish((await started("done", 256 * KiB, 0)).uuid);
    cancelled = (await server.client.cancelBackup({ uuid: (await started("cancelled", 8 * MiB, 256 * KiB)).uuid }))
      .statuses[0]!;
    // 32 s at this limit: active until the test lifts it.
    active = await started("active", 8 * MiB, 256 * KiB);
  });

  afterAll(async () => {
    await server?.stop();
    await empty?.stop();
  });

  it("pages through every job in-process, page token by page token, up to a limit", async () => {
    const all: string[] = [];
    for await (const status of listBackups(server.client, { states: [], pageSize: 1 })) all.push(status.uuid);
    expect(all).toEqual([active.uuid, cancelled.uuid, done.uuid]);
    const limited: string[] = [];
    for await (const status of listBackups(server.client, { states: [], pageSize: 2, limit: 2 })) {
      limited.push(status.uuid);
    }
    expect(limited).toEqual([active.uuid, cancelled.uuid]);
    const finished: string[] = [];
    for await (const status of listBackups(server.client, { states: [BackupState.DONE, BackupState.CANCELLED] })) {
      finished.push(status.uuid);
    }
    expect(finished).toEqual([cancelled.uuid, done.uuid]);
  });

  it("lists jobs newest first as lines or a JSON array, filtered by state and limited", async () => {
    const [text, filtered, limited, badState, badLimit] = await Promise.all([
      runCli(["list", "--server", server.address]),
      runCli(["list", "--state", "done", "--state", "CANCELLED", "--json", "--server", server.address]),
      runCli(["list", "--limit", "1", "--server", server.address]),
      runCli(["list", "--state", "finished", "--server", server.address]),
      runCli(["list", "--limit", "0", "--server", server.address]),
    ]);
    expect(text.code).toBe(0);
    expect(stdoutLines(text)).toEqual([
      expect.stringMatching(new RegExp(`^${active.uuid} ACTIVE  .* ETA `)),
      expect.stringMatching(new RegExp(`^${cancelled.uuid} CANCELLED  .*cancelled by request$`)),
      expect.stringMatching(new RegExp(`^${done.uuid} DONE  100\\.0% .*done\\.vma$`)),
    ]);
    expect(filtered.code).toBe(0);
    const documents = JSON.parse(filtered.stdout) as Array<{ uuid: string; state: string }>;
    expect(documents.map(({ uuid, state }) => [uuid, state])).toEqual([
      [cancelled.uuid, "BACKUP_STATE_CANCELLED"],
      [done.uuid, "BACKUP_STATE_DONE"],
    ]);
    expect(stdoutLines(limited)).toEqual([expect.stringMatching(new RegExp(`^${active.uuid} ACTIVE `))]);
    expect(badState.code).toBe(2);
    expect(badState.stderr).toContain("expected one of active, done, error, cancelled");
    expect(badLimit.code).toBe(2);
    expect(badLimit.stderr).toContain("must be at least 1");
  });

  it("changes a running job's speed, refuses a finished job with its reason, and 0 lifts the limit", async () => {
    const [slower, finished, badSize, noSize] = await Promise.all([
      runCli(["speed", active.uuid, "512K", "--server", server.address]),
      runCli(["speed", done.uuid, "1M", "--server", server.address]),
      runCli(["speed", active.uuid, "12Q", "--server", server.address]),
      runCli(["speed", active.uuid, "--server", server.address]),
    ]);
    expect(slower).toEqual({ code: 0, stdout: `${active.uuid} speed limit 512.0 KiB/s\n`, stderr: "" });
    expect((await server.client.queryBackup({ uuid: active.uuid })).status?.speedLimit).toBe(BigInt(512 * KiB));
    expect(finished.code).toBe(1);
    expect(finished.stderr).toMatch(new RegExp(`^error: FAILED_PRECONDITION \\(JOB_NOT_ACTIVE\\): .*${done.uuid}`));
    expect(badSize.code).toBe(2);
    expect(badSize.stderr).toContain(`unknown unit "Q"`);
    expect(noSize.code).toBe(2);
    expect(noSize.stderr).toContain("missing required argument 'size'");

    const unlimited = await runCli(["speed", active.uuid, "0", "--json", "--server", server.address]);
    expect(unlimited.code).toBe(0);
    expect(JSON.parse(unlimited.stdout)).toMatchObject({ uuid: active.uuid, speedLimit: "0" });
    // 8 MiB at 256 KiB/s would take half a minute.
    expect((await finish(active.uuid)).state).toBe(BackupState.DONE);
  });

  it("deletes finished jobs, with their archive when asked, and refuses an active one", async () => {
    const running = await server.client.backup({
      backupFile: "still-running.vma",
      devices: [{ name: "drive-scsi0", path: await server.writeSource("running.raw", randomBytes(MiB)) }],
      speedLimit: BigInt(64 * KiB),
    });
    const runningUuid = running.status!.uuid;
    const [withArchive, recordOnly, refused, unknown] = await Promise.all([
      runCli(["delete", done.uuid, "--archive", "--server", server.address]),
      runCli(["delete", cancelled.uuid, "--json", "--server", server.address]),
      runCli(["delete", runningUuid, "--server", server.address]),
      runCli(["delete", "00000000-0000-4000-8000-000000000000", "--server", server.address]),
    ]);
    await server.client.cancelBackup({ uuid: runningUuid });
    expect(withArchive).toEqual({ code: 0, stdout: `deleted ${done.uuid} and its archive\n`, stderr: "" });
    expect(recordOnly).toEqual({ code: 0, stdout: "{}\n", stderr: "" });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: FAILED_PRECONDITION \(JOB_ACTIVE\): .*cancel it first/);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^error: NOT_FOUND \(JOB_NOT_FOUND\): /);

    const backups = await readdir(server.backupDir);
    expect(backups).not.toContain("done.vma");
    // The other finished job's archive was not asked for and stays.
    expect(backups).toContain("active.vma");
    const listed = await runCli(["list", "--json", "--server", server.address]);
    const uuids = (JSON.parse(listed.stdout) as Array<{ uuid: string }>).map(({ uuid }) => uuid);
    expect(uuids).toEqual([runningUuid, active.uuid]);
  });

  it("says so when there is nothing to list", async () => {
    const [none, noneInState] = await Promise.all([
      runCli(["list", "--server", (await emptyServer()).address]),
      runCli(["list", "--state", "error", "--server", server.address]),
    ]);
    expect(none).toEqual({ code: 0, stdout: "no backups\n", stderr: "" });
    expect(noneInState).toEqual({ code: 0, stdout: "no backups in these states\n", stderr: "" });
  });
});

describe("control characters in names, as status | list | watch | errors show them", () => {
  // An OSC that sets the terminal title, a C1 CSI (8-bit "ESC ["), a screen clear and blink.
  const OSC_NAME = "drive\x1b]0;pwned\x07";
  const C1_NAME = "drive\u009b31m";
  const FILE = "vm\x1b[2J.vma";
  const REQUEST = "req\x1b[5m";
  /** A terminal control character: C0 except newline, DEL, C1. */
  const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;
  let server: TestServer;
  let uuid: string;
  let failedUuid: string;

  beforeAll(async () => {
    server = await startTestServer({ progressIntervalMs: 50 });
    const a = await server.writeSource("a.raw", randomBytes(64 * KiB));
    const b = await server.writeSource("b.raw", randomBytes(64 * KiB));
    const started = await server.client.backup({
      backupFile: FILE,
      devices: [
        { name: OSC_NAME, path: a },
        { name: C1_NAME, path: b },
      ],
      requestId: REQUEST,
    });
    uuid = started.status!.uuid;
    for await (const update of server.client.watchBackup({ uuid })) void update;
    // A job whose error message names its device: the source shrinks under a slow read.
    const shrinking = await server.writeSource("shrinking.raw", randomBytes(4 * MiB));
    const failing = await server.client.backup({
      backupFile: "failing.vma",
      devices: [{ name: OSC_NAME, path: shrinking }],
      speedLimit: 256n * BigInt(KiB),
    });
    failedUuid = failing.status!.uuid;
    await writeFile(shrinking, "");
    for await (const update of server.client.watchBackup({ uuid: failedUuid })) void update;
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("escapes them in human output and keeps them exact in JSON", async () => {
    const [status, failed, list, watch, json] = await Promise.all([
      runCli(["status", uuid, "--server", server.address]),
      runCli(["status", failedUuid, "--server", server.address]),
      runCli(["list", "--server", server.address]),
      runCli(["watch", uuid, "--server", server.address]),
      runCli(["status", uuid, "--server", server.address, "--json"]),
    ]);
    for (const result of [status, failed, list, watch]) {
      expect(result.code).toBe(0);
      expect(result.stdout).not.toMatch(CONTROL);
    }
    expect(status.stdout).toContain("drive\\x1b]0;pwned\\x07");
    expect(status.stdout).toContain("drive\\x9b31m");
    expect(status.stdout).toContain("vm\\x1b[2J.vma");
    expect(status.stdout).toContain("req\\x1b[5m");
    expect(failed.stdout).toMatch(/error +device drive\\x1b\]0;pwned\\x07: source shrank/);
    expect(list.stdout).toContain("vm\\x1b[2J.vma");
    expect(list.stdout).toContain("drive\\x1b]0;pwned\\x07: source shrank");
    expect(watch.stdout).toContain("vm\\x1b[2J.vma");

    const exact = JSON.parse(json.stdout) as {
      backupFile: string;
      requestId: string;
      devices: Array<{ name: string }>;
    };
    expect(exact.devices.map((device) => device.name)).toEqual([OSC_NAME, C1_NAME]);
    expect(exact.backupFile).toBe(path.join(server.backupDir, FILE));
    expect(exact.requestId).toBe(REQUEST);
  });

  it("escapes them in error messages from the server", async () => {
    const missing = path.join(server.sourceDir, "missing\u009b[31m.raw");
    const result = await runCli(["backup", "--server", server.address, "--file", "x.vma", "--device", `d=${missing}`]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      /^error: NOT_FOUND \(SOURCE_NOT_FOUND\): devices\[0\]\.path: .*missing\\x9b\[31m\.raw/,
    );
    expect(result.stderr).not.toMatch(CONTROL);
  });
});
