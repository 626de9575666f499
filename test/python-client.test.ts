// Cross-language proof of the API: stubs generated from proto/ with Debian's
// Python toolchain drive a real server (test/python/backup_client.py) through
// a whole backup, the watch stream, a request_id retry, ListBackups and the
// documented error codes, whose google.rpc.Status details Python decodes
// with modules generated from google-proto-files (Debian has no
// grpcio-status). The script reports what it saw as JSON; this file judges
// it, and checks the archive on disk against a size computed from
// docs/vma-format.md.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { access, mkdir, mkdtemp, open, readdir, rm, stat, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

const run = promisify(execFile);

/** Debian's interpreter: the pyenv python3 on PATH has no grpc. */
const PYTHON = "/usr/bin/python3";
/** Debian's protoc (3.21) for --python_out: grpc_tools bundles protoc 3.5. */
const PROTOC = "/usr/bin/protoc";
/** What .ci/run installs when missing. */
const DEBIAN_PACKAGES = "python3-grpcio python3-grpc-tools python3-protobuf protobuf-compiler";
/** `-s`: ignore ~/.local site-packages, so the Debian modules are the ones tested. */
const PYTHON_FLAGS = ["-s"];

const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const PROTO_DIR = path.join(REPO_ROOT, "proto");
const PROTO_FILE = path.join(PROTO_DIR, "vmabackup", "v1", "backup.proto");
/** google/rpc/status.proto and error_details.proto, as the npm package ships them. */
const GOOGLE_PROTO_DIR = path.join(REPO_ROOT, "node_modules", "google-proto-files");
const RPC_PROTO_FILES = ["status.proto", "error_details.proto"].map((name) =>
  path.join(GOOGLE_PROTO_DIR, "google", "rpc", name),
);
const CLIENT_SCRIPT = fileURLToPath(new URL("./python/backup_client.py", import.meta.url));
const SCRIPT_TIMEOUT_MS = 20_000;

// VMA layout (docs/vma-format.md §2, §5): fixed header part, extent header, slots
// the writer fills per extent, block and cluster sizes.
const VMA_FIXED_HEADER = 12288;
const VMA_EXTENT_HEADER = 512;
const VMA_WRITER_SLOTS = 58;
const BLOCK = 4096;
const CLUSTER = 65536;
const MiB = 1024 * 1024;

const ARCHIVE_NAME = "vm-python.vma";
const CONFIG_NAME = "qemu-server.conf";
const CONFIG_TEXT = "memory: 512\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n#qmdump#map:scsi1:drive-scsi1:local:raw:\n";
/** Throttled so that the job stays ACTIVE for about a second and the watch sees progress. */
const SPEED_LIMIT = 2 * MiB; // slow enough (~1.8 s) for the 1 s rate window to report a rate

/**
 * Both sizes end inside a cluster, the first one also inside a block. 49 + 10
 * = 59 clusters: two extents for a writer that flushes at 58 slots like
 * Proxmox, one for a writer that fills all 59, so the size check tells.
 */
const DISKS = [
  { name: "drive-scsi0", file: "scsi0.raw", size: 3 * MiB + 3 * BLOCK + 512 },
  { name: "drive-scsi1", file: "scsi1.raw", size: 9 * CLUSTER + 9 * BLOCK },
] as const;

/** BackupStatus as the Python script prints it (proto field names, enum names). */
interface PyDeviceStatus {
  name: string;
  dev_id: number;
  size: number;
  transferred_bytes: number;
  zero_bytes: number;
}

interface PyStatus {
  uuid: string;
  state: string;
  error_message: string;
  backup_file: string;
  format: string;
  total_bytes: number;
  transferred_bytes: number;
  zero_bytes: number;
  start_time: string | null;
  end_time: string | null;
  speed_limit: number;
  rate: number;
  eta_ms: number | null;
  revision: number;
  update_time: string | null;
  request_id: string;
  devices: PyDeviceStatus[];
}

interface PyQuery {
  has_status: boolean;
  status: PyStatus | null;
}

/** A google.rpc.Status as the script decoded it from the trailer. */
interface PyRichStatus {
  code: number;
  message: string;
  types: string[];
  error_info: { reason: string; domain: string; metadata: Record<string, string> } | null;
  bad_request: Array<{ field: string; description: string }> | null;
}

interface PyFailure {
  code: string;
  details: string;
  status: PyRichStatus | null;
}

interface PySummary {
  grpc_version: string;
  query_latest_before_any_job: PyQuery;
  started: PyStatus;
  watch: PyStatus[];
  query_by_uuid: PyQuery;
  query_latest: PyQuery;
  retried: PyStatus;
  listed: string[];
  unknown_uuid: string;
  errors: {
    query_unknown_uuid: PyFailure;
    backup_without_devices: PyFailure;
    backup_to_existing_file: PyFailure;
    watch_unknown_uuid: PyFailure;
    device_in_use: PyFailure;
  };
}

/** Output and error text of a failed child process, for the assertion message. */
function describeFailure(command: string, error: unknown): string {
  const { code, killed, message, stderr, stdout } = error as {
    code?: number | string;
    killed?: boolean;
    message?: string;
    stderr?: string;
    stdout?: string;
  };
  const reason =
    killed === true ? "killed at its time limit" : typeof code === "number" ? `exit code ${code}` : message;
  return [`${command} failed: ${reason ?? String(error)}`, stderr?.trim(), stdout?.trim()].filter(Boolean).join("\n");
}

/** Fails, never skips, when the Debian toolchain is missing: CI must install it. */
async function requirePythonToolchain(python: string = PYTHON, protoc: string = PROTOC): Promise<void> {
  const problems: string[] = [];
  const imports = "import grpc, grpc_tools.protoc, google.protobuf";
  try {
    await run(python, [...PYTHON_FLAGS, "-c", imports]);
  } catch (error) {
    problems.push(describeFailure(`${python} -c "${imports}"`, error));
  }
  try {
    await access(protoc, fsConstants.X_OK);
  } catch {
    problems.push(`${protoc} is missing`);
  }
  if (problems.length > 0) {
    throw new Error(
      `The Python client test needs the Debian packages ${DEBIAN_PACKAGES} ` +
        `(.ci/run installs them; locally: apt-get install -y ${DEBIAN_PACKAGES}).\n${problems.join("\n")}`,
    );
  }
}

/**
 * The well-known .proto files (google/protobuf/timestamp.proto) that grpc_tools
 * ships. Debian's protoc finds its own only in libprotobuf-dev, which it
 * merely recommends and .ci/run's --no-install-recommends leaves out.
 */
async function wellKnownProtoDir(): Promise<string> {
  const script = "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))";
  const { stdout } = await run(PYTHON, [...PYTHON_FLAGS, "-c", script]);
  return stdout.trim();
}

/**
 * Generates backup_pb2.py and backup_pb2_grpc.py under `outDir`, as the
 * README tells users to, and google/rpc/status_pb2.py and
 * error_details_pb2.py, which grpcio-status would otherwise bring.
 */
async function generateStubs(outDir: string): Promise<void> {
  const wellKnown = `-I${await wellKnownProtoDir()}`;
  const commands: Array<[string, string[]]> = [
    [PROTOC, [`-I${PROTO_DIR}`, wellKnown, `--python_out=${outDir}`, PROTO_FILE]],
    [PYTHON, [...PYTHON_FLAGS, "-m", "grpc_tools.protoc", `-I${PROTO_DIR}`, `--grpc_python_out=${outDir}`, PROTO_FILE]],
    [PROTOC, [`-I${GOOGLE_PROTO_DIR}`, wellKnown, `--python_out=${outDir}`, ...RPC_PROTO_FILES]],
  ];
  for (const [command, args] of commands) {
    try {
      await run(command, args);
    } catch (error) {
      throw new Error(describeFailure(`${command} ${args.join(" ")}`, error));
    }
  }
}

async function runPythonClient(args: string[]): Promise<PySummary> {
  let stdout: string;
  try {
    ({ stdout } = await run(PYTHON, [...PYTHON_FLAGS, CLIENT_SCRIPT, ...args], {
      timeout: SCRIPT_TIMEOUT_MS,
      killSignal: "SIGKILL",
    }));
  } catch (error) {
    throw new Error(describeFailure(`${PYTHON} ${path.relative(REPO_ROOT, CLIENT_SCRIPT)}`, error));
  }
  return JSON.parse(stdout) as PySummary;
}

/**
 * Random data with zero 4 KiB blocks mixed in: every third block, and the
 * whole third cluster (a slot with mask 0). The last block is never zeroed,
 * so zero_bytes does not depend on how a partial zero block would count.
 */
function diskImage(size: number): Buffer {
  const image = randomBytes(size);
  const blocks = Math.ceil(size / BLOCK);
  for (let block = 0; block < blocks - 1; block += 1) {
    const inThirdCluster = Math.floor((block * BLOCK) / CLUSTER) === 2;
    if (block % 3 === 1 || inThirdCluster) image.fill(0, block * BLOCK, (block + 1) * BLOCK);
  }
  return image;
}

/** Blocks a VMA writer stores (not all zero) and the bytes it skips as zero. */
function blockCensus(image: Buffer): { storedBlocks: number; zeroBytes: number } {
  const zeros = Buffer.alloc(BLOCK);
  let storedBlocks = 0;
  let zeroBytes = 0;
  for (let offset = 0; offset < image.length; offset += BLOCK) {
    const block = image.subarray(offset, offset + BLOCK);
    if (block.equals(zeros.subarray(0, block.length))) zeroBytes += block.length;
    else storedBlocks += 1;
  }
  return { storedBlocks, zeroBytes };
}

/** A blob: 2-byte length, payload; strings carry a NUL (docs/vma-format.md §3). */
function blobSize(payloadBytes: number): number {
  return 2 + payloadBytes;
}

/** Archive size by docs/vma-format.md: header, one 512-byte header per 58 clusters, stored blocks. */
function expectedArchiveSize(images: readonly Buffer[], storedBlocks: number): number {
  const blobBuffer =
    1 +
    blobSize(Buffer.byteLength(CONFIG_NAME) + 1) +
    blobSize(Buffer.byteLength(CONFIG_TEXT)) +
    DISKS.reduce((sum, disk) => sum + blobSize(Buffer.byteLength(disk.name) + 1), 0);
  const headerSize = VMA_FIXED_HEADER + Math.ceil(blobBuffer / 512) * 512;
  const clusters = images.reduce((sum, image) => sum + Math.ceil(image.length / CLUSTER), 0);
  const extents = Math.ceil(clusters / VMA_WRITER_SLOTS);
  return headerSize + extents * VMA_EXTENT_HEADER + storedBlocks * BLOCK;
}

async function readHead(file: string, length: number): Promise<Buffer> {
  const handle = await open(file, "r");
  try {
    const head = Buffer.alloc(length);
    await handle.read(head, 0, length, 0);
    return head;
  } finally {
    await handle.close();
  }
}

describe("the Python toolchain check", () => {
  it("fails with the packages to install when the interpreter or protoc is missing", async () => {
    const missingDir = path.join(os.tmpdir(), "vmabackup-no-such-dir");
    const check = requirePythonToolchain(path.join(missingDir, "python3"), path.join(missingDir, "protoc"));
    await expect(check).rejects.toThrow(/needs the Debian packages python3-grpcio python3-grpc-tools/);
    await expect(check).rejects.toThrow(/vmabackup-no-such-dir\/protoc is missing/);
  });
});

describe("a Python client generated from proto/", () => {
  let server: TestServer | undefined;
  let workDir: string | undefined;
  let summary: PySummary;
  let images: Buffer[];

  beforeAll(async () => {
    await requirePythonToolchain();
    workDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-python-"));
    const stubsDir = path.join(workDir, "stubs");
    await mkdir(stubsDir);
    await generateStubs(stubsDir);

    server = await startTestServer({ progressIntervalMs: 50 });
    images = DISKS.map((disk) => diskImage(disk.size));
    const devicePaths = await Promise.all(DISKS.map((disk, index) => server!.writeSource(disk.file, images[index]!)));
    const configPath = path.join(workDir, CONFIG_NAME);
    await writeFile(configPath, CONFIG_TEXT);

    summary = await runPythonClient([
      "--stubs",
      stubsDir,
      "--address",
      server.address,
      "--backup-file",
      ARCHIVE_NAME,
      ...DISKS.flatMap((disk, index) => ["--device", `${disk.name}=${devicePaths[index]}`]),
      "--config",
      `${CONFIG_NAME}=${configPath}`,
      "--speed-limit",
      String(SPEED_LIMIT),
    ]);
  });

  afterAll(async () => {
    await server?.stop();
    if (workDir !== undefined) await rm(workDir, { recursive: true, force: true });
  });

  const totalBytes = DISKS.reduce((sum, disk) => sum + disk.size, 0);

  it("sees no status for an empty uuid before any job ran", () => {
    expect(summary.query_latest_before_any_job).toEqual({ has_status: false, status: null });
  });

  it("starts a backup of two devices and a config", () => {
    const { started } = summary;
    expect(started.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(started.state).toBe("BACKUP_STATE_ACTIVE");
    expect(started.backup_file).toBe(path.join(server!.backupDir, ARCHIVE_NAME));
    expect(started.format).toBe("BACKUP_FORMAT_VMA");
    expect(started.total_bytes).toBe(totalBytes);
    expect(started.speed_limit).toBe(SPEED_LIMIT);
    expect(started.start_time).not.toBeNull();
    expect(started.end_time).toBeNull();
    expect(started.devices.map(({ name, dev_id, size }) => ({ name, dev_id, size }))).toEqual(
      DISKS.map((disk, index) => ({ name: disk.name, dev_id: index + 1, size: disk.size })),
    );
  });

  it("watches the job from its current status to DONE, only moving forward", () => {
    const { started, watch } = summary;
    const first = watch[0]!;
    // The first message is the job as it is now: the same job, still running.
    expect(first).toMatchObject({
      uuid: started.uuid,
      state: "BACKUP_STATE_ACTIVE",
      backup_file: started.backup_file,
      start_time: started.start_time,
      total_bytes: totalBytes,
    });
    expect(first.transferred_bytes).toBeGreaterThanOrEqual(started.transferred_bytes);

    expect(watch.every((status) => status.uuid === started.uuid)).toBe(true);
    // ACTIVE until the one terminal status, which ends the stream.
    expect(watch.slice(0, -1).every((status) => status.state === "BACKUP_STATE_ACTIVE")).toBe(true);
    expect(watch.at(-1)!.state).toBe("BACKUP_STATE_DONE");
    for (let index = 1; index < watch.length; index += 1) {
      expect(watch[index]!.transferred_bytes).toBeGreaterThanOrEqual(watch[index - 1]!.transferred_bytes);
      expect(watch[index]!.zero_bytes).toBeGreaterThanOrEqual(watch[index - 1]!.zero_bytes);
    }
    // Live progress reached Python, not just the start and the end.
    expect(watch.some((status) => status.transferred_bytes > 0 && status.transferred_bytes < totalBytes)).toBe(true);
  });

  it("ends with every byte transferred and the zero blocks counted per device", () => {
    const done = summary.watch.at(-1)!;
    const census = images.map(blockCensus);
    expect(done.error_message).toBe("");
    expect(done.end_time).not.toBeNull();
    expect(done.transferred_bytes).toBe(totalBytes);
    expect(done.zero_bytes).toBe(census.reduce((sum, disk) => sum + disk.zeroBytes, 0));
    expect(done.devices).toEqual(
      DISKS.map((disk, index) => ({
        name: disk.name,
        dev_id: index + 1,
        size: disk.size,
        transferred_bytes: disk.size,
        zero_bytes: census[index]!.zeroBytes,
      })),
    );
  });

  it("queries the finished job by uuid and as the most recent one", () => {
    const done = summary.watch.at(-1)!;
    expect(summary.query_by_uuid).toEqual({ has_status: true, status: done });
    expect(summary.query_latest).toEqual({ has_status: true, status: done });
  });

  it("carries rate, ETA, revision, update time and request id in the statuses", () => {
    const { started, watch } = summary;
    expect(started.request_id).toMatch(/^python-/);
    expect(started.revision).toBeGreaterThan(0);
    expect(started.update_time).not.toBeNull();
    expect(watch.every((status) => status.request_id === started.request_id)).toBe(true);
    for (let index = 1; index < watch.length; index += 1) {
      expect(watch[index]!.revision).toBeGreaterThan(watch[index - 1]!.revision);
    }
    // Throttled at 2 MiB/s: some update measured a rate and estimated the time left.
    expect(watch.some((status) => status.rate > 0 && status.eta_ms !== null)).toBe(true);
    const done = watch.at(-1)!;
    expect(done.rate).toBe(0);
    expect(done.eta_ms).toBeNull();
  });

  it("gets the finished job back when it retries Backup with the same request_id", () => {
    expect(summary.retried).toEqual(summary.watch.at(-1));
  });

  it("pages through ListBackups, newest first", () => {
    // The collision job of the error checks started after the listing.
    expect(summary.listed).toEqual([summary.started.uuid]);
  });

  it("decodes ErrorInfo and BadRequest from the grpc-status-details-bin trailer", () => {
    const { errors } = summary;
    const errorInfo = (failure: PyFailure): NonNullable<PyRichStatus["error_info"]> => {
      expect(failure.status).not.toBeNull();
      expect(failure.status!.message).toBe(failure.details);
      return failure.status!.error_info!;
    };
    expect(errorInfo(errors.backup_without_devices)).toEqual({
      reason: "NO_DEVICES",
      domain: "vmabackup",
      metadata: { field: "devices" },
    });
    expect(errors.backup_without_devices.status!.types).toEqual([
      "type.googleapis.com/google.rpc.ErrorInfo",
      "type.googleapis.com/google.rpc.BadRequest",
    ]);
    expect(errors.backup_without_devices.status!.bad_request).toEqual([
      { field: "devices", description: errors.backup_without_devices.details },
    ]);

    expect(errors.backup_to_existing_file.status!.code).toBe(6); // ALREADY_EXISTS
    expect(errorInfo(errors.backup_to_existing_file)).toEqual({
      reason: "BACKUP_FILE_EXISTS",
      domain: "vmabackup",
      metadata: { field: "backup_file" },
    });
    expect(errors.backup_to_existing_file.status!.bad_request).toBeNull();

    expect(errors.device_in_use.code).toBe("FAILED_PRECONDITION");
    expect(errorInfo(errors.device_in_use)).toEqual({
      reason: "DEVICE_IN_USE",
      domain: "vmabackup",
      metadata: { field: "devices[0].path", job_uuid: expect.stringMatching(/^[0-9a-f-]{36}$/) },
    });

    expect(errorInfo(errors.query_unknown_uuid)).toMatchObject({
      reason: "JOB_NOT_FOUND",
      metadata: { field: "uuid" },
    });
    // A streaming call carries them in its trailer just the same.
    expect(errors.watch_unknown_uuid.code).toBe("NOT_FOUND");
    expect(errorInfo(errors.watch_unknown_uuid)).toMatchObject({ reason: "JOB_NOT_FOUND", domain: "vmabackup" });
  });

  it("gets NOT_FOUND, INVALID_ARGUMENT and ALREADY_EXISTS as documented", () => {
    const { errors } = summary;
    expect(errors.query_unknown_uuid.code).toBe("NOT_FOUND");
    expect(errors.query_unknown_uuid.details).toContain(summary.unknown_uuid);
    expect(errors.backup_without_devices.code).toBe("INVALID_ARGUMENT");
    expect(errors.backup_without_devices.details).toMatch(/devices/);
    expect(errors.backup_to_existing_file.code).toBe("ALREADY_EXISTS");
    expect(errors.backup_to_existing_file.details).toMatch(/backup_file/);
  });

  it("leaves exactly the archive, with the size docs/vma-format.md gives and the job's uuid", async () => {
    const census = images.map(blockCensus);
    const storedBlocks = census.reduce((sum, disk) => sum + disk.storedBlocks, 0);
    const archive = path.join(server!.backupDir, ARCHIVE_NAME);
    // The refused requests created nothing, and the archive was not overwritten.
    expect(await readdir(server!.backupDir)).toEqual([ARCHIVE_NAME]);
    expect((await stat(archive)).size).toBe(expectedArchiveSize(images, storedBlocks));
    const head = await readHead(archive, 24);
    expect(head.subarray(0, 4).toString("latin1")).toBe("VMA\0");
    expect(head.subarray(8, 24).toString("hex")).toBe(summary.started.uuid.replaceAll("-", ""));
  });
});
