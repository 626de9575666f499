// A real S3-compatible server for tests: s3rver 3.7.1 on 127.0.0.1 (random
// port, data in a temp dir). s3rver answers AbortMultipartUpload and
// ListParts with MethodNotAllowed, so a small HTTP front adds both from
// s3rver's own upload directories (<dir>/<bucket>/._S3rver_uploads/<id>):
// Abort removes the directory, ListParts says whether it exists (its part
// list is left empty). Everything else goes to s3rver untouched. A second
// proxy can fail part uploads (500 answers, dropped connections).
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import {
  createServer,
  type IncomingMessage,
  request,
  type RequestListener,
  type Server,
  type ServerResponse,
} from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { S3Client } from "@aws-sdk/client-s3";
import S3rver from "s3rver";

export interface TestS3Server {
  /** http://127.0.0.1:PORT, the front clients use. */
  readonly endpoint: string;
  readonly bucket: string;
  close(): Promise<void>;
}

/** s3rver's folder of unfinished multipart uploads of `bucket`. */
function uploadsDirectory(directory: string, bucket: string): string {
  return join(directory, bucket, "._S3rver_uploads");
}

/** s3rver alone on 127.0.0.1 (random port), keeping its data in `directory`: no front (the benchmarks use it so). */
export async function startS3rver(
  directory: string,
  bucket: string,
): Promise<{ port: number; close(): Promise<void> }> {
  const s3rver = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const { port } = (await s3rver.run()) as AddressInfo;
  return { port, close: () => s3rver.close() };
}

/** Writes an AWS credentials file (ini) with the keys s3rver accepts, for --s3-credentials. */
export function writeS3rverCredentials(file: string): Promise<void> {
  return writeFile(file, "[default]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n", { mode: 0o600 });
}

export async function startS3Server(bucket = "vmabackup-test"): Promise<TestS3Server> {
  const directory = await mkdtemp(join(tmpdir(), "s3rver-"));
  const s3rver = await startS3rver(directory, bucket);
  const backend = `http://127.0.0.1:${s3rver.port}`;
  const front = await listen(async (incoming, outgoing) => {
    const url = new URL(incoming.url ?? "/", backend);
    const uploadId = url.searchParams.get("uploadId");
    const isUploadRequest = uploadId !== null && !url.searchParams.has("partNumber");
    if (isUploadRequest && (incoming.method === "DELETE" || incoming.method === "GET")) {
      incoming.resume();
      const [, bucketName = ""] = url.pathname.split("/");
      const folder = join(uploadsDirectory(directory, bucketName), uploadId.replace(/[^0-9a-f]/g, "_"));
      const exists = await stat(folder).then(
        () => true,
        () => false,
      );
      if (!exists) return answerXml(outgoing, 404, "<Error><Code>NoSuchUpload</Code></Error>");
      if (incoming.method === "DELETE") {
        await rm(folder, { recursive: true, force: true });
        outgoing.writeHead(204).end();
        return;
      }
      return answerXml(outgoing, 200, `<ListPartsResult><UploadId>${uploadId}</UploadId></ListPartsResult>`);
    }
    forward(backend, incoming, outgoing);
  });
  return {
    endpoint: front.endpoint,
    bucket,
    async close() {
      await front.close();
      await s3rver.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

function answerXml(outgoing: ServerResponse, status: number, body: string): void {
  outgoing.writeHead(status, { "content-type": "application/xml" });
  outgoing.end(`<?xml version="1.0" encoding="UTF-8"?>${body}`);
}

function forward(target: string, incoming: IncomingMessage, outgoing: ServerResponse): void {
  const upstream = new URL(target);
  const forwarded = request(
    {
      host: upstream.hostname,
      port: upstream.port,
      method: incoming.method,
      path: incoming.url,
      headers: incoming.headers,
    },
    (answer) => {
      outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(outgoing);
    },
  );
  forwarded.on("error", () => outgoing.destroy());
  incoming.pipe(forwarded);
}

async function listen(handler: RequestListener): Promise<{ endpoint: string; close(): Promise<void> }> {
  const server: Server = createServer((incoming, outgoing) => {
    Promise.resolve(handler(incoming, outgoing)).catch(() => outgoing.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A client as the store would build one: path-style, any credentials, a few quick retries. */
export function testS3Client(endpoint: string, maxAttempts = 4): S3Client {
  return new S3Client({
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    maxAttempts,
  });
}

/** What the proxy does to one part upload (PUT ...?partNumber=N&uploadId=...). */
export type PartFault = "pass" | "error-500" | "drop";

export interface FaultProxy {
  readonly endpoint: string;
  /** Part uploads seen so far, in arrival order, with what was done to them. */
  readonly partRequests: Array<{ partNumber: number; fault: PartFault }>;
  /** Of each part upload passed on: its x-amz-checksum-crc32 header and the CRC32 of the body sent. */
  readonly partChecksums: Array<{ partNumber: number; header: string | undefined; body: string }>;
  /** Most part uploads forwarded at the same time. */
  maxConcurrentParts(): number;
  close(): Promise<void>;
}

/** Forwards everything to `target`; `decide` picks the fate of each part upload. */
export async function startFaultProxy(
  target: string,
  decide: (partNumber: number, attempt: number) => PartFault,
): Promise<FaultProxy> {
  const attempts = new Map<number, number>();
  const partRequests: FaultProxy["partRequests"] = [];
  const partChecksums: FaultProxy["partChecksums"] = [];
  let concurrentParts = 0;
  let maxConcurrentParts = 0;
  const proxy = await listen((incoming, outgoing) => {
    const url = new URL(incoming.url ?? "/", target);
    const partNumber = Number(url.searchParams.get("partNumber") ?? Number.NaN);
    if (incoming.method !== "PUT" || !Number.isInteger(partNumber) || !url.searchParams.has("uploadId")) {
      forward(target, incoming, outgoing);
      return;
    }
    const attempt = (attempts.get(partNumber) ?? 0) + 1;
    attempts.set(partNumber, attempt);
    const fault = decide(partNumber, attempt);
    partRequests.push({ partNumber, fault });
    if (fault === "drop") {
      // Reads part of the body, then cuts the connection without an answer.
      incoming.once("data", () => incoming.socket.destroy());
      return;
    }
    if (fault === "error-500") {
      incoming.resume();
      incoming.once("end", () => answerXml(outgoing, 500, "<Error><Code>InternalError</Code></Error>"));
      return;
    }
    concurrentParts += 1;
    maxConcurrentParts = Math.max(maxConcurrentParts, concurrentParts);
    let crc = 0;
    incoming.on("data", (chunk: Buffer) => {
      crc = crc32(chunk, crc);
    });
    incoming.once("end", () => {
      const header = incoming.headers["x-amz-checksum-crc32"];
      const body = Buffer.alloc(4);
      body.writeUInt32BE(crc >>> 0);
      partChecksums.push({
        partNumber,
        header: Array.isArray(header) ? header[0] : header,
        body: body.toString("base64"),
      });
    });
    outgoing.once("close", () => {
      concurrentParts -= 1;
    });
    forward(target, incoming, outgoing);
  });
  return { ...proxy, partRequests, partChecksums, maxConcurrentParts: () => maxConcurrentParts };
}
