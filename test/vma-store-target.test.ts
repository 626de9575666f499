// A VMA archive written through each store, plain and compressed: the
// compressed object decompressed by the zstd/gzip programs is byte for byte
// the plain archive the same job writes (uuid and ctime fixed), and our
// reader verifies each object read back from its store.
import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readdir, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buffer as readAll } from "node:stream/consumers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ArchiveLimitError } from "../src/drivers/driver.js";
import { VmaStoreTarget } from "../src/drivers/vma-store-target.js";
import { ArchiveMissingError, type ArchiveStore } from "../src/stores/archive-store.js";
import { COMPRESSION_SUFFIX, type Compression, compressUpload } from "../src/stores/compressed-upload.js";
import { createLocalStore } from "../src/stores/local/local-store.js";
import { createS3Store } from "../src/stores/s3/s3-store.js";
import { openArchiveStream } from "../src/vma/open-archive.js";
import { verifyArchive } from "../src/vma/verify-archive.js";
import { startS3Server, type TestS3Server, testS3Client } from "./helpers/s3-server.js";

const CLUSTER = 65536;
const UUID = randomUUID();
const CTIME = 1_767_225_600;
const config = Buffer.from("name: vm100\nmemory: 2048\n");
/** Two disks: data, a zero cluster, data; and one odd-sized. */
const disks = [
  Buffer.concat([randomBytes(3 * CLUSTER), Buffer.alloc(CLUSTER), randomBytes(CLUSTER)]),
  Buffer.concat([Buffer.alloc(CLUSTER, 0x61), randomBytes(CLUSTER / 2)]),
];

let root: string;
let s3: TestS3Server;
let stores: Array<[string, ArchiveStore]>;

beforeAll(async () => {
  root = await realpath(await mkdtemp(join(tmpdir(), "vma-store-target-")));
  await mkdir(join(root, "local"));
  s3 = await startS3Server();
  stores = [
    ["local", createLocalStore({ name: "local", directory: join(root, "local") })],
    ["s3", createS3Store({ name: "s3", client: testS3Client(s3.endpoint), bucket: s3.bucket, partSize: 2 ** 20 })],
  ];
});

afterAll(async () => {
  await s3?.close();
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

/** Writes the job's archive through `store` as `key`; the bytes as stored. */
async function backUp(store: ArchiveStore, key: string, compression: Compression): Promise<Buffer> {
  const target = new VmaStoreTarget(compressUpload(await store.create(key), { compression }), {
    uuid: UUID,
    ctime: CTIME,
  });
  target.registerConfig("qemu-server.conf", config);
  const ids = disks.map((disk, index) => target.registerDevice(`drive-scsi${index}`, disk.length));
  for (const [index, disk] of disks.entries()) {
    for (let cluster = 0; cluster * CLUSTER < disk.length; cluster += 1) {
      const data = Buffer.alloc(CLUSTER);
      disk.copy(data, 0, cluster * CLUSTER, (cluster + 1) * CLUSTER);
      let mask = 0;
      for (let block = 0; block < 16; block += 1) {
        if (data.subarray(block * 4096, (block + 1) * 4096).some((byte) => byte !== 0)) mask |= 1 << block;
      }
      await target.writeCluster(ids[index] ?? 0, cluster, data, mask);
    }
    await target.completeDevice(ids[index] ?? 0);
  }
  await target.close();
  const stored = await readAll(await store.read(key));
  expect(stored.length).toBe(target.bytesWritten);
  return stored;
}

/** What the zstd or gzip program makes of `data`. */
function decompressWithProgram(compression: Compression, data: Buffer, scratch: string): Buffer {
  if (compression === "none") return data;
  const file = join(scratch, `archive${COMPRESSION_SUFFIX[compression]}`);
  execFileSync("sh", ["-c", `cat > ${file}`], { input: data });
  return execFileSync(compression === "zstd" ? "zstd" : "gzip", ["-dc", file], { maxBuffer: 64 * 2 ** 20 });
}

describe("VMA through the stores", () => {
  it.each(["local", "s3"])("%s: .vma.zst and .vma.gz decompress to the plain .vma, and each verifies", async (name) => {
    const store = stores.find(([storeName]) => storeName === name)?.[1];
    if (store === undefined) throw new Error(`no ${name} store`);
    const plain = await backUp(store, "vm100.vma", "none");
    const scratch = join(root, `scratch-${name}`);
    await mkdir(scratch);
    for (const compression of ["zstd", "gzip"] as const) {
      const stored = await backUp(store, `vm100.vma${COMPRESSION_SUFFIX[compression]}`, compression);
      expect(stored.length).toBeLessThan(plain.length);
      expect(decompressWithProgram(compression, stored, scratch).equals(plain)).toBe(true);
    }
    for (const key of ["vm100.vma", "vm100.vma.zst", "vm100.vma.gz"]) {
      const opened = await openArchiveStream(await store.read(key), undefined);
      const verdict = await verifyArchive(opened.chunks, { allowIncomplete: false });
      expect(verdict.problems).toEqual([]);
      expect(verdict.ok).toBe(true);
      expect(verdict.header?.uuid).toBe(UUID);
    }
  });

  it("refuses a plan the format cannot hold with ArchiveLimitError, before writing anything", async () => {
    const [, store] = stores[0] ?? [];
    if (store === undefined) throw new Error("no local store");
    const upload = await store.create("too-big.vma");
    const target = new VmaStoreTarget(upload, { uuid: UUID });
    expect(() => target.registerConfig("huge.conf", Buffer.alloc(70_000))).toThrow(ArchiveLimitError);
    await target.abort();
    await expect(store.read("too-big.vma")).rejects.toBeInstanceOf(ArchiveMissingError);
    expect(await readdir(join(root, "local"))).not.toContain("too-big.vma.partial");
  });
});
