// A `serve` child killed with SIGKILL while it uploads an archive to an S3
// target (s3rver on 127.0.0.1): after a restart the job is ERROR
// (interrupted), its multipart upload is aborted (ListParts: NoSuchUpload)
// and no object has the archive's name. The same for a compressed archive
// in the backup dir: the restart removes its partial file.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promisify } from "node:util";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { HeadObjectCommand, ListPartsCommand, type S3Client } from "@aws-sdk/client-s3";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { type ClientOf, createClient } from "../src/client/grpc-client.js";
import { INTERRUPTED_MESSAGE, JOB_STORE_FILE } from "../src/engine/backup-engine.js";
import { JobStore } from "../src/store/job-store.js";
import { startS3Server, type TestS3Server, testS3Client, writeS3rverCredentials } from "./helpers/s3-server.js";
import { listeningAddress, PROJECT_ROOT, runServe, type ServeProcess, serveArgs } from "./helpers/serve-process.js";

const MiB = 1024 * 1024;

let s3: TestS3Server;
let s3Client: S3Client;
let rootDir: string;
let backupDir: string;
let sourceDir: string;
let stateDir: string;
let credentials: string;
const processes: ServeProcess[] = [];
const clients: Array<ClientOf<typeof BackupService>> = [];

beforeAll(async () => {
  s3 = await startS3Server();
  s3Client = testS3Client(s3.endpoint);
});

afterAll(async () => {
  s3Client.destroy();
  await s3.close();
});

beforeEach(async () => {
  rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-stores-restart-"));
  backupDir = path.join(rootDir, "backups");
  sourceDir = path.join(rootDir, "images");
  stateDir = path.join(rootDir, "state");
  await Promise.all([backupDir, sourceDir, stateDir].map((dir) => mkdir(dir)));
  credentials = path.join(rootDir, "s3-credentials");
  await writeS3rverCredentials(credentials);
  await writeFile(path.join(sourceDir, "disk.raw"), randomBytes(2 * MiB));
});

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  await Promise.all(processes.splice(0).map((serve) => serve.kill()));
  await rm(rootDir, { recursive: true, force: true });
});

function serve(): ServeProcess {
  const started = runServe([
    ...serveArgs({ backupDir, sourceRoot: sourceDir, stateDir }),
    "--progress-interval",
    "50ms",
    "--target",
    `offsite=s3://${s3.bucket}/fleet`,
    "--s3-endpoint",
    s3.endpoint,
    "--s3-path-style",
    "--s3-credentials",
    credentials,
  ]);
  processes.push(started);
  return started;
}

async function connect(server: ServeProcess): Promise<ClientOf<typeof BackupService>> {
  const client = createClient(BackupService, await listeningAddress(server));
  clients.push(client);
  return client;
}

/** Waits until the job read `bytes` of its source. */
async function waitForTransfer(client: ClientOf<typeof BackupService>, uuid: string, bytes: bigint): Promise<void> {
  for await (const message of client.watchBackup({ uuid })) {
    if ((message.status?.transferredBytes ?? 0n) >= bytes) return;
  }
}

function recordOf(uuid: string): { pendingRef?: Record<string, string> } {
  const store = JobStore.open(path.join(stateDir, JOB_STORE_FILE));
  try {
    return (store.get(uuid)?.record ?? {}) as { pendingRef?: Record<string, string> };
  } finally {
    store.close();
  }
}

describe("kill -9 mid-upload, then restart", () => {
  it("S3: the job ends interrupted, the multipart upload is aborted, no object appears", async () => {
    const first = serve();
    const client = await connect(first);
    const devices = [{ name: "drive-scsi0", path: path.join(sourceDir, "disk.raw") }];
    const started = (
      await client.backup({ backupFile: "vm100.vma.zst", target: "offsite", devices, speedLimit: BigInt(MiB) })
    ).status!;
    await waitForTransfer(client, started.uuid, BigInt(256 * 1024));
    const uploadId = recordOf(started.uuid).pendingRef?.uploadId;
    expect(uploadId).toBeDefined();
    await first.kill();

    const second = serve();
    const again = await connect(second);
    const status = (await again.queryBackup({ uuid: started.uuid })).status!;
    expect(status.state).toBe(BackupState.ERROR);
    expect(status.errorMessage).toBe(INTERRUPTED_MESSAGE);
    await expect(
      s3Client.send(new ListPartsCommand({ Bucket: s3.bucket, Key: "fleet/vm100.vma.zst", UploadId: uploadId })),
    ).rejects.toMatchObject({ name: "NoSuchUpload" });
    await expect(
      s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: "fleet/vm100.vma.zst" })),
    ).rejects.toMatchObject({ name: "NotFound" });
    expect(second.logs.some((line) => line.msg === "removed the partial archive" && line.uuid === started.uuid)).toBe(
      true,
    );
  });

  it("local .vma.zst: the job ends interrupted and its partial file is removed", async () => {
    const first = serve();
    const client = await connect(first);
    const devices = [{ name: "drive-scsi0", path: path.join(sourceDir, "disk.raw") }];
    const started = (await client.backup({ backupFile: "vm100.vma.zst", devices, speedLimit: BigInt(MiB) })).status!;
    await waitForTransfer(client, started.uuid, BigInt(256 * 1024));
    expect(await readdir(backupDir)).toEqual(["vm100.vma.zst.partial"]);
    await first.kill();

    const again = await connect(serve());
    const status = (await again.queryBackup({ uuid: started.uuid })).status!;
    expect(status.state).toBe(BackupState.ERROR);
    expect(status.errorMessage).toBe(INTERRUPTED_MESSAGE);
    expect(await readdir(backupDir)).toEqual([]);
  });
});

describe("the CLI client", () => {
  it("backs up to a target with vzdump's name from --vmid and --compression; status shows location and written bytes", async () => {
    const server = serve();
    const address = await listeningAddress(server);
    const cli = (args: string[]) =>
      promisify(execFile)(process.execPath, ["bin/vmabackup.js", ...args, "--server", address], { cwd: PROJECT_ROOT });
    const disk = `d=${path.join(sourceDir, "disk.raw")}`;
    const started = await cli([
      "backup",
      "--vmid",
      "100",
      "--compression",
      "gzip",
      "--target",
      "offsite",
      "--device",
      disk,
      "--watch",
    ]);
    const uuid = started.stdout.split("\n")[0]?.trim() ?? "";
    const status = (await cli(["status", uuid])).stdout;
    expect(status).toMatch(/state\s+DONE/);
    expect(status).toMatch(
      new RegExp(
        `location\\s+s3://${s3.bucket}/fleet/vzdump-qemu-100-\\d{4}_\\d{2}_\\d{2}-\\d{2}_\\d{2}_\\d{2}\\.vma\\.gz`,
      ),
    );
    expect(status).toMatch(/written\s+\S+ \S*B stored/);
    await expect(cli(["backup", "--device", disk])).rejects.toMatchObject({ code: 2 });
  });
});
