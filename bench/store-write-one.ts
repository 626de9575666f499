// One contender of bench/store-write.ts, in its own process so that its peak
// RSS is its own: streams ARCHIVE through one store (and compression stage)
// and prints a JSON line: seconds, stored bytes, peak RSS (KiB).
// Usage: store-write-one.ts ARCHIVE local|s3 none|zstd|gzip TARGET
//   TARGET: a directory (local) or an endpoint http://host:port/bucket (s3).
import { createReadStream } from "node:fs";
import { basename } from "node:path";
import { S3Client } from "@aws-sdk/client-s3";
import type { ArchiveStore } from "../src/stores/archive-store.js";
import { COMPRESSION_SUFFIX, type Compression, compressUpload } from "../src/stores/compressed-upload.js";
import { createLocalStore } from "../src/stores/local/local-store.js";
import { createS3Store } from "../src/stores/s3/s3-store.js";

const [archive, kind, compression, target] = process.argv.slice(2) as [string, string, Compression, string];

function openStore(): { store: ArchiveStore; close(): void } {
  if (kind === "local") return { store: createLocalStore({ name: "local", directory: target }), close: () => {} };
  const url = new URL(target);
  const client = new S3Client({
    endpoint: url.origin,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
  });
  const store = createS3Store({ name: "s3", client, bucket: url.pathname.slice(1) });
  return { store, close: () => client.destroy() };
}

const { store, close } = openStore();
const start = process.hrtime.bigint();
const key = `${basename(archive)}-${process.pid}${COMPRESSION_SUFFIX[compression]}`;
const upload = compressUpload(await store.create(key), { compression });
for await (const chunk of createReadStream(archive, { highWaterMark: 4 * 2 ** 20 })) {
  await upload.write([chunk as Buffer]);
}
await upload.commit();
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
close();
process.stdout.write(
  `${JSON.stringify({ seconds, storedBytes: upload.bytesWritten, peakKiB: process.resourceUsage().maxRSS, key })}\n`,
);
