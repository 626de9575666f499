// Backups through the real server into its stores: compressed archives in
// the backup dir (zstd -dc / gzip -dc give a valid VMA with the source's
// bytes, and our reader reads them directly), and an S3 target (s3rver on
// 127.0.0.1): the object appears only when the job is DONE, the status and
// ListBackups name it, DeleteBackup(delete_archive) removes it, and a
// cancelled job leaves neither object nor multipart upload.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { HeadObjectCommand, ListPartsCommand, type S3Client } from "@aws-sdk/client-s3";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  BackupService,
  type BackupStatus,
  BackupState,
  Compression,
  SourceKind,
} from "../gen/vmabackup/v1/backup_pb.js";
import { type ClientOf, createClient } from "../src/client/grpc-client.js";
import { JOB_STORE_FILE } from "../src/engine/backup-engine.js";
import { type RunningServer, startServer } from "../src/server/server.js";
import { JobStore } from "../src/store/job-store.js";
import { openArchive } from "../src/vma/open-archive.js";
import { verifyArchive } from "../src/vma/verify-archive.js";
import { KiB, MiB, makeSandbox, parseVma, type Sandbox } from "./engine-helpers.js";
import { startS3Server, type TestS3Server, testS3Client, writeS3rverCredentials } from "./helpers/s3-server.js";

let s3: TestS3Server;
let s3Client: S3Client;
let sandbox: Sandbox;
let server: RunningServer;
let client: ClientOf<typeof BackupService>;
let credentials: string;
/** 1 MiB: random blocks with every third one zero. */
const randomDisk = (() => {
  const data = randomBytes(MiB);
  for (let block = 0; block < MiB / (4 * KiB); block += 3) data.fill(0, block * 4 * KiB, (block + 1) * 4 * KiB);
  return data;
})();

beforeAll(async () => {
  s3 = await startS3Server();
  s3Client = testS3Client(s3.endpoint);
});

afterAll(async () => {
  s3Client.destroy();
  await s3.close();
});

beforeEach(async () => {
  sandbox = await makeSandbox();
  credentials = path.join(sandbox.root, "s3-credentials");
  await writeS3rverCredentials(credentials);
  await fs.writeFile(path.join(sandbox.src, "disk.raw"), randomDisk);
  server = await start();
  client = createClient(BackupService, server.address);
});

afterEach(async () => {
  client.close();
  await server.shutdown("test finished");
  await sandbox.cleanup();
});

function start(): Promise<RunningServer> {
  return startServer({
    listen: "127.0.0.1:0",
    backupDir: sandbox.out,
    sourceRoots: [sandbox.src],
    stateDir: sandbox.state,
    progressIntervalMs: 50,
    logger: pino({ level: "silent" }),
    shutdownGraceMs: 200,
    targets: [{ name: "offsite", bucket: s3.bucket, prefix: "fleet" }],
    s3: { endpoint: s3.endpoint, forcePathStyle: true, credentialsFile: credentials },
  });
}

function device() {
  return [{ name: "drive-scsi0", path: path.join(sandbox.src, "disk.raw"), sourceKind: SourceKind.PATH }];
}

async function waitForEnd(uuid: string): Promise<BackupStatus> {
  for await (const response of client.watchBackup({ uuid })) {
    const status = response.status;
    if (status !== undefined && status.state !== BackupState.ACTIVE) return status;
  }
  throw new Error("the watch ended before the job");
}

function decompress(program: "zstd" | "gzip", file: string, into: string): void {
  execFileSync("sh", ["-c", `${program} -dc "$1" > "$2"`, "sh", file, into]);
}

/** `action` fails with gRPC status `code`, its message containing `text`. */
async function expectGrpcError(action: () => Promise<unknown>, code: grpc.status, text: string): Promise<void> {
  const error = await action().then(
    () => undefined,
    (caught: unknown) => caught as { code?: number; message: string },
  );
  expect(error, `expected ${grpc.status[code]}`).toBeDefined();
  expect(error?.code).toBe(code);
  expect(error?.message).toContain(text);
}

describe("compressed archives in the backup dir", () => {
  it.each([
    ["zstd", "vm100.vma.zst", Compression.ZSTD],
    ["gzip", "vm100.vma.gz", Compression.GZIP],
  ] as const)(
    "%s: decompresses to a VMA with the disk's bytes, and our reader reads it directly",
    async (program, name, compression) => {
      const started = (await client.backup({ backupFile: name, devices: device(), compression })).status!;
      const end = await waitForEnd(started.uuid);
      expect(end.state, end.errorMessage).toBe(BackupState.DONE);
      const file = path.join(sandbox.out, name);
      expect(end.archiveLocation).toBe(file);
      const size = (await fs.stat(file)).size;
      expect(end.writtenBytes).toBe(BigInt(size));
      expect(size).toBeLessThan(MiB);

      const plain = path.join(sandbox.root, "plain.vma");
      decompress(program, file, plain);
      const parsed = await parseVma(plain);
      expect(parsed.uuid).toBe(started.uuid);
      expect(parsed.devices[0]?.data.equals(randomDisk)).toBe(true);

      const opened = await openArchive(file);
      expect(opened.compression).toBe(program);
      const verdict = await verifyArchive(opened.chunks, { allowIncomplete: false });
      expect(verdict.problems).toEqual([]);
      expect(verdict.header?.uuid).toBe(started.uuid);
    },
  );

  it("takes the compression from the name, and refuses a name that says another one", async () => {
    const started = (await client.backup({ backupFile: "by-name.vma.gz", devices: device() })).status!;
    expect((await waitForEnd(started.uuid)).state).toBe(BackupState.DONE);
    expect((await openArchive(path.join(sandbox.out, "by-name.vma.gz"))).compression).toBe("gzip");
    await expectGrpcError(
      () => client.backup({ backupFile: "wrong.vma.gz", devices: device(), compression: Compression.ZSTD }),
      grpc.status.INVALID_ARGUMENT,
      "compression",
    );
    await expectGrpcError(
      () => client.backup({ backupFile: "plain.vma", devices: device(), compression: Compression.GZIP }),
      grpc.status.INVALID_ARGUMENT,
      "says none",
    );
    expect((await fs.readdir(sandbox.out)).sort()).toEqual(["by-name.vma.gz"]);
  });

  it("names the archive as vzdump does from a vmid, and refuses an impossible vmid", async () => {
    const started = (await client.backup({ backupFile: "", vmid: 105, devices: device() })).status!;
    expect(path.basename(started.backupFile)).toMatch(
      /^vzdump-qemu-105-\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}\.vma\.zst$/,
    );
    expect((await waitForEnd(started.uuid)).state).toBe(BackupState.DONE);
    await expectGrpcError(
      () => client.backup({ backupFile: "", vmid: 7, devices: device() }),
      grpc.status.INVALID_ARGUMENT,
      "vmid",
    );
  });
});

describe("an S3 target", () => {
  it("ends DONE with the object visible; status and ListBackups name it; delete_archive removes it", async () => {
    const started = (await client.backup({ backupFile: "vm100/a.vma.zst", target: "offsite", devices: device() }))
      .status!;
    const end = await waitForEnd(started.uuid);
    expect(end.state, end.errorMessage).toBe(BackupState.DONE);
    expect(end.archiveLocation).toBe(`s3://${s3.bucket}/fleet/vm100/a.vma.zst`);
    const head = await s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: "fleet/vm100/a.vma.zst" }));
    expect(BigInt(head.ContentLength ?? -1)).toBe(end.writtenBytes);
    const listed = await client.listBackups({});
    expect(listed.statuses.find((status) => status.uuid === started.uuid)?.archiveLocation).toBe(end.archiveLocation);
    expect(await fs.readdir(sandbox.out)).toEqual([]);

    await client.deleteBackup({ uuid: started.uuid, deleteArchive: true });
    await expect(
      s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: "fleet/vm100/a.vma.zst" })),
    ).rejects.toMatchObject({ name: "NotFound" });
  });

  it("refuses an unknown target, naming the ones there are", async () => {
    await expectGrpcError(
      () => client.backup({ backupFile: "x.vma", target: "nowhere", devices: device() }),
      grpc.status.INVALID_ARGUMENT,
      '"offsite"',
    );
  });

  it("cancelled mid-upload: no object and no multipart upload", async () => {
    const started = (
      await client.backup({ backupFile: "cut.vma", target: "offsite", devices: device(), speedLimit: 256n * 1024n })
    ).status!;
    const uploadId = pendingUploadId(started.uuid);
    await client.cancelBackup({ uuid: started.uuid });
    expect((await waitForEnd(started.uuid)).state).toBe(BackupState.CANCELLED);
    await expect(
      s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: "fleet/cut.vma" })),
    ).rejects.toMatchObject({
      name: "NotFound",
    });
    await expect(
      s3Client.send(new ListPartsCommand({ Bucket: s3.bucket, Key: "fleet/cut.vma", UploadId: uploadId })),
    ).rejects.toMatchObject({ name: "NoSuchUpload" });
  });
});

/** The multipart upload id the job's record holds (read while the server runs: WAL mode). */
function pendingUploadId(uuid: string): string {
  const store = JobStore.open(path.join(sandbox.state, JOB_STORE_FILE));
  try {
    const record = store.get(uuid)?.record as { pendingRef?: { uploadId?: string } } | undefined;
    const uploadId = record?.pendingRef?.uploadId;
    if (uploadId === undefined) throw new Error(`job ${uuid} has no upload id in its record`);
    return uploadId;
  } finally {
    store.close();
  }
}
