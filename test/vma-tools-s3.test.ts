// `vmabackup vma list|verify|extract s3://bucket/key`: the archive tools
// read objects from a real S3 server (s3rver on 127.0.0.1) as a stream, in
// every compression, and say the same as they say of the file itself.
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { gunzipSync, gzipSync, zstdCompressSync } from "node:zlib";
import { PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { parse as parseUuid } from "uuid";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VmaWriter } from "../src/vma/writer.js";
import { startS3Server, type TestS3Server, testS3Client } from "./helpers/s3-server.js";

const REPO = resolve(import.meta.dirname, "..");
const SAMPLE_GZ = resolve(REPO, "test/fixtures/pve-real-truncated-sample.vma.gz");
const CLUSTER = 65536;

interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

let s3: TestS3Server;
let client: S3Client;
let root: string;
let sample: Buffer;
let small: Buffer;
let smallDisk: Buffer;

/** Runs `vmabackup vma ARGS` with credentials in the environment only. */
function vma(args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["bin/vmabackup.js", "vma", ...args], {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER", ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (text: string) => {
      stdout += text;
    });
    child.stderr.setEncoding("utf8").on("data", (text: string) => {
      stderr += text;
    });
    child.on("error", reject);
    child.on("close", (code) => resolvePromise({ code, stdout, stderr }));
  });
}

async function put(key: string, body: Buffer): Promise<string> {
  await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
  return `s3://${s3.bucket}/${key}`;
}

/** A one-device archive of 5 clusters: random data, zeros, random. */
async function smallArchive(): Promise<{ archive: Buffer; disk: Buffer }> {
  const disk = Buffer.concat([randomBytes(2 * CLUSTER), Buffer.alloc(CLUSTER), randomBytes(2 * CLUSTER)]);
  const chunks: Buffer[] = [];
  const writer = new VmaWriter(
    {
      async write(parts) {
        for (const part of parts) chunks.push(Buffer.from(part));
      },
    },
    { uuid: parseUuid(randomUUID()) },
  );
  const devId = writer.addDevice("drive-scsi0", disk.length);
  for (let cluster = 0; cluster < 5; cluster += 1) {
    const data = disk.subarray(cluster * CLUSTER, (cluster + 1) * CLUSTER);
    await writer.writeCluster(devId, cluster, data, cluster === 2 ? 0 : 0xffff);
  }
  writer.completeDevice(devId);
  await writer.finish();
  return { archive: Buffer.concat(chunks), disk };
}

beforeAll(async () => {
  s3 = await startS3Server();
  client = testS3Client(s3.endpoint);
  root = await mkdtemp(join(tmpdir(), "vma-tools-s3-"));
  sample = gunzipSync(await readFile(SAMPLE_GZ));
  ({ archive: small, disk: smallDisk } = await smallArchive());
});

afterAll(async () => {
  client?.destroy();
  await s3?.close();
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

describe("vma tools on s3:// archives", () => {
  const compressions: Array<[string, (data: Buffer) => Buffer]> = [
    ["vma", (data) => data],
    ["vma.zst", (data) => zstdCompressSync(data)],
    ["vma.gz", (data) => gzipSync(data)],
  ];

  it.each(compressions)("list and verify of a .%s object say what they say of the file", async (suffix, compress) => {
    const url = await put(`sample.${suffix}`, compress(sample));
    const fromFile = await vma(["verify", "--json", SAMPLE_GZ]);
    const fromS3 = await vma(["verify", "--json", "--s3-endpoint", s3.endpoint, url]);
    expect(fromS3.stderr).toBe(fromFile.stderr);
    expect(fromS3.code).toBe(fromFile.code);
    expect(fromS3.code).toBe(1);
    expect(JSON.parse(fromS3.stdout)).toEqual(JSON.parse(fromFile.stdout));
    const list = await vma(["--s3-endpoint", s3.endpoint, "list", url]);
    expect(list.stdout).toBe((await vma(["list", SAMPLE_GZ])).stdout);
    expect(list.code).toBe(0);
  });

  it("extracts a .vma.zst object byte for byte, the endpoint taken from AWS_ENDPOINT_URL", async () => {
    const url = await put("dump/small.vma.zst", zstdCompressSync(small));
    const out = join(root, "extracted");
    const result = await vma(["extract", url, out], { AWS_ENDPOINT_URL: s3.endpoint });
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect((await readFile(join(out, "disk-drive-scsi0.raw"))).equals(smallDisk)).toBe(true);
  });

  it("says what is wrong with a missing object or a bad URL (exit 2)", async () => {
    const missing = await vma(["verify", "--s3-endpoint", s3.endpoint, `s3://${s3.bucket}/nope.vma`]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`s3://${s3.bucket}/nope.vma does not exist`);
    const badBucket = await vma(["list", "--s3-endpoint", s3.endpoint, "s3://UPPER/x.vma"]);
    expect(badBucket.code).toBe(2);
    expect(badBucket.stderr).toContain("the bucket name must be 3-63 lower-case letters");
  });
});
