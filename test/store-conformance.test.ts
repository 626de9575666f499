// One contract, every store: the same tests run against the local-directory
// store (temp dir) and the S3 store (s3rver on 127.0.0.1), with and without
// the compression stage. Then what only one store has: S3 under injected
// faults (parts answered 500, connections dropped), its in-flight bound;
// the local store's confinement and failed-flush rule.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { link, mkdir, mkdtemp, readdir, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { buffer as readAll } from "node:stream/consumers";
import { gunzipSync, zstdDecompressSync } from "node:zlib";
import {
  AbortMultipartUploadCommand,
  CreateMultipartUploadCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  ArchiveExistsError,
  ArchiveKeptError,
  ArchiveKeyError,
  ArchiveMissingError,
  type ArchiveRef,
  type ArchiveStore,
} from "../src/stores/archive-store.js";
import { type CompressionOptions, compressUpload } from "../src/stores/compressed-upload.js";
import { ArchiveOutsideError } from "../src/stores/local/local-errors.js";
import { createLocalStore } from "../src/stores/local/local-store.js";
import { createS3Store } from "../src/stores/s3/s3-store.js";
import {
  type FaultProxy,
  startFaultProxy,
  startS3Server,
  type TestS3Server,
  testS3Client,
} from "./helpers/s3-server.js";

const MIB = 2 ** 20;
/** Small parts keep the suite quick; s3rver takes them (real S3 wants 5 MiB at least, but for the last). */
const PART_SIZE = MIB;

interface StoreFixture {
  readonly label: string;
  readonly store: ArchiveStore;
  /** Every name in the store's namespace: files (partials too) or object keys. */
  names(): Promise<string[]>;
  /** Someone else writes `key` (over ours). */
  overwrite(key: string, data: Buffer): Promise<void>;
  /** True when nothing of the pending upload is left (no partial file, or NoSuchUpload). */
  leftoverGone(pending: ArchiveRef): Promise<boolean>;
  /** Whether commit refuses a name taken after create (s3rver ignores If-None-Match). */
  readonly exclusiveCommit: boolean;
}

let localRoot: string;
let s3: TestS3Server;
let s3Client: S3Client;

beforeAll(async () => {
  localRoot = await realpath(await mkdtemp(join(tmpdir(), "store-conformance-")));
  s3 = await startS3Server();
  s3Client = testS3Client(s3.endpoint);
});

afterAll(async () => {
  s3Client?.destroy();
  await s3?.close();
  if (localRoot !== undefined) await rm(localRoot, { recursive: true, force: true });
});

let fixtureCount = 0;

async function localFixture(): Promise<StoreFixture> {
  fixtureCount += 1;
  const directory = join(localRoot, `store-${fixtureCount}`);
  await mkdir(directory);
  const names = async (): Promise<string[]> =>
    (await readdir(directory, { recursive: true, withFileTypes: true }))
      .filter((entry) => entry.isFile())
      .map((entry) => relative(directory, join(entry.parentPath, entry.name)))
      .sort();
  return {
    label: "local",
    store: createLocalStore({ name: "local", directory }),
    names,
    async overwrite(key, data) {
      const path = join(directory, key);
      await rm(path, { force: true });
      await writeFile(path, data);
    },
    async leftoverGone(pending) {
      return !(await names()).some((name) => join(directory, name) === `${pending.path}.partial`);
    },
    exclusiveCommit: true,
  };
}

async function s3Fixture(): Promise<StoreFixture> {
  fixtureCount += 1;
  const prefix = `store-${fixtureCount}`;
  return {
    label: "s3",
    store: createS3Store({ name: "s3", client: s3Client, bucket: s3.bucket, prefix, partSize: PART_SIZE }),
    names: () => objectKeys(s3Client, s3.bucket, `${prefix}/`),
    async overwrite(key, data) {
      await s3Client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: `${prefix}/${key}`, Body: data }));
    },
    leftoverGone: (pending) => uploadGone(s3Client, pending),
    exclusiveCommit: false,
  };
}

async function objectKeys(client: S3Client, bucket: string, prefix: string): Promise<string[]> {
  const listed = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
  return (listed.Contents ?? []).map((object) => (object.Key ?? "").slice(prefix.length)).sort();
}

/** s3rver has no ListMultipartUploads: an upload is gone when ListParts answers NoSuchUpload. */
async function uploadGone(client: S3Client, pending: ArchiveRef): Promise<boolean> {
  try {
    await client.send(new ListPartsCommand({ Bucket: pending.bucket, Key: pending.key, UploadId: pending.uploadId }));
    return false;
  } catch (error) {
    if ((error as Error).name === "NoSuchUpload") return true;
    throw error;
  }
}

/** Bytes where every 4-byte word is its own offset: misplaced or lost data shows. */
function pattern(size: number, seed = 0): Buffer {
  const data = Buffer.alloc(size);
  for (let offset = 0; offset + 4 <= size; offset += 4) data.writeUInt32LE((offset + seed) >>> 0, offset);
  return data;
}

/** Runs a child to its end; its output and how it ended. */
function runToEnd(command: string, args: string[]): Promise<{ stdout: string; stderr: string; signal: string | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: join(import.meta.dirname, ".."), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (text: string) => {
      stdout += text;
    });
    child.stderr.setEncoding("utf8").on("data", (text: string) => {
      stderr += text;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.on("error", reject);
    child.on("close", (_code, signal) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, signal });
    });
  });
}

async function readBack(store: ArchiveStore, key: string): Promise<Buffer> {
  return readAll(await store.read(key));
}

const fixtures: Array<[string, () => Promise<StoreFixture>]> = [
  ["local", localFixture],
  ["s3", s3Fixture],
];

describe.each(fixtures)("ArchiveStore contract: %s", (_label, makeFixture) => {
  let fixture: StoreFixture;
  // A fresh directory or key prefix per test: what one test leaves cannot hide in another's listing.
  beforeEach(async () => {
    fixture = await makeFixture();
  });

  it("commits exactly the bytes written, visible only after commit, with a reference stat() knows", async () => {
    const { store } = fixture;
    const data = pattern(3 * MIB + 123);
    const upload = await store.create("one.vma");
    expect(upload.location).toBe(store.location("one.vma"));
    // Overlapping calls land in call order.
    await Promise.all([
      upload.write([data.subarray(0, MIB)]),
      upload.write([data.subarray(MIB, 2 * MIB), data.subarray(2 * MIB, 2 * MIB + 1)]),
      upload.write([data.subarray(2 * MIB + 1)]),
    ]);
    await expect(store.read("one.vma")).rejects.toBeInstanceOf(ArchiveMissingError);
    expect(await fixture.names()).not.toContain("one.vma");
    const ref = await upload.commit();
    expect(upload.bytesWritten).toBe(data.length);
    expect((await readBack(store, "one.vma")).equals(data)).toBe(true);
    expect(await store.stat(ref)).toMatchObject({ size: data.length, location: store.location("one.vma") });
    expect(await fixture.names()).toEqual(["one.vma"]);
    expect(await fixture.leftoverGone(upload.pending)).toBe(true);
    expect(await store.findCommitted(upload.pending)).toEqual(ref);
    // The reference is data for the job record: it survives JSON.
    expect(JSON.parse(JSON.stringify(ref))).toEqual(ref);
    await expect(upload.abort()).resolves.toBeUndefined();
    expect((await readBack(store, "one.vma")).equals(data)).toBe(true);
    expect(await store.remove(ref)).toBe("removed");
    expect(await store.remove(ref)).toBe("absent");
    expect(await store.stat(ref)).toBeUndefined();
  });

  it("has released the caller's memory when write() resolves", async () => {
    const { store } = fixture;
    const chunk = pattern(MIB + 7);
    const expected = Buffer.concat([0, 1, 2].map((round) => pattern(MIB + 7, round)));
    const upload = await store.create("reuse.vma");
    for (let round = 0; round < 3; round += 1) {
      chunk.set(pattern(MIB + 7, round));
      await upload.write([chunk]);
      chunk.fill(0xee);
    }
    const ref = await upload.commit();
    expect((await readBack(store, "reuse.vma")).equals(expected)).toBe(true);
    await store.remove(ref);
  });

  it("refuses a name that exists, and a second writer of the same name where it can tell", async () => {
    const { store } = fixture;
    const first = await store.create("taken.vma");
    await first.write([pattern(1000)]);
    const ref = await first.commit();
    await expect(store.create("taken.vma")).rejects.toBeInstanceOf(ArchiveExistsError);
    expect((await readBack(store, "taken.vma")).equals(pattern(1000))).toBe(true);
    if (fixture.exclusiveCommit) {
      const early = await store.create("race.vma");
      await fixture.overwrite("race.vma", Buffer.from("someone else's"));
      await early.write([pattern(10)]);
      await expect(early.commit()).rejects.toBeInstanceOf(ArchiveExistsError);
      await early.abort();
      expect((await readBack(store, "race.vma")).toString()).toBe("someone else's");
    }
    await store.remove(ref);
  });

  it("abort leaves nothing: no object, no partial, no upload", async () => {
    const { store } = fixture;
    const before = await fixture.names();
    const upload = await store.create("aborted.vma");
    await upload.write([pattern(3 * MIB)]);
    await upload.abort();
    await upload.abort();
    expect(await fixture.names()).toEqual(before);
    expect(await fixture.leftoverGone(upload.pending)).toBe(true);
    expect(await store.findCommitted(upload.pending)).toBeUndefined();
    await expect(store.read("aborted.vma")).rejects.toBeInstanceOf(ArchiveMissingError);
    await expect(upload.write([pattern(10)])).rejects.toThrow();
  });

  it("finds the leftovers of a job that died mid-write by its recorded reference, and removes only them", async () => {
    const { store } = fixture;
    const dead = await store.create("dead.vma");
    await dead.write([pattern(2 * MIB)]);
    // The process "dies": the upload is neither committed nor aborted; only its reference survives.
    const recorded: ArchiveRef = JSON.parse(JSON.stringify(dead.pending));
    const live = await store.create("live.vma");
    await live.write([pattern(100)]);
    const liveRef = await live.commit();
    expect(await store.listLeftovers([recorded, liveRef])).toEqual([recorded]);
    expect(await store.findCommitted(recorded)).toBeUndefined();
    expect(await store.discardLeftover(recorded)).toBe("removed");
    expect(await fixture.leftoverGone(recorded)).toBe(true);
    expect(await store.discardLeftover(recorded)).toBe("absent");
    expect(await store.listLeftovers([recorded])).toEqual([]);
    expect(await fixture.names()).toEqual(["live.vma"]);
    await store.remove(liveRef);
  });

  it("removes only the object the job committed, never one written over it", async () => {
    const { store } = fixture;
    const upload = await store.create("replaced.vma");
    await upload.write([pattern(2000)]);
    const ref = await upload.commit();
    await fixture.overwrite("replaced.vma", pattern(3000, 7));
    await expect(store.stat(ref)).rejects.toMatchObject({ name: "ArchiveKeptError", why: "not-the-archive" });
    await expect(store.remove(ref)).rejects.toBeInstanceOf(ArchiveKeptError);
    expect((await readBack(store, "replaced.vma")).equals(pattern(3000, 7))).toBe(true);
    // A pending reference whose token or identity does not match finds no committed object.
    expect(await store.findCommitted(upload.pending)).toBeUndefined();
  });

  it("rejects keys that are not plain relative names, and references of another store", async () => {
    const { store } = fixture;
    for (const key of ["", "/abs.vma", "../up.vma", "a//b.vma", "a/./b.vma"]) {
      await expect(store.create(key)).rejects.toBeInstanceOf(ArchiveKeyError);
    }
    const foreign = fixture.label === "s3" ? { store: "local", path: "/x" } : { store: "s3", bucket: "b", key: "k" };
    await expect(store.remove(foreign)).rejects.toMatchObject({ why: "bad-reference" });
  });

  const compressions: Array<[string, CompressionOptions, (data: Buffer) => Buffer]> = [
    ["zstd (program)", { compression: "zstd" }, (data) => zstdDecompressSync(data)],
    ["zstd (zlib)", { compression: "zstd", zstdEngine: "zlib" }, (data) => zstdDecompressSync(data)],
    ["gzip", { compression: "gzip", level: 1 }, (data) => gunzipSync(data)],
  ];

  it.each(compressions)("stores %s output that decompresses to the bytes written", async (_name, options, inflate) => {
    const { store } = fixture;
    const key = `compressed-${options.compression}-${options.zstdEngine ?? ""}.vma`;
    const data = Buffer.concat([randomBytes(2 * MIB), pattern(2 * MIB)]);
    const upload = compressUpload(await store.create(key), options);
    const chunk = Buffer.alloc(MIB);
    for (let offset = 0; offset < data.length; offset += MIB) {
      data.copy(chunk, 0, offset, offset + MIB);
      await upload.write([chunk]);
      chunk.fill(0x55);
    }
    const ref = await upload.commit();
    const stored = await readBack(store, key);
    expect(stored.length).toBe(upload.bytesWritten);
    expect(stored.length).toBeLessThan(data.length);
    expect(inflate(stored).equals(data)).toBe(true);
    await store.remove(ref);
  });

  it("aborting a compressed upload mid-way leaves nothing", async () => {
    const { store } = fixture;
    const before = await fixture.names();
    const upload = compressUpload(await store.create("compressed-aborted.vma"), { compression: "zstd" });
    await upload.write([randomBytes(3 * MIB)]);
    await upload.abort();
    expect(await fixture.names()).toEqual(before);
    expect(await fixture.leftoverGone(upload.pending)).toBe(true);
  });
});

describe("S3 store under faults (a proxy in front of s3rver)", () => {
  let proxy: FaultProxy | undefined;
  let client: S3Client | undefined;

  async function storeBehind(decide: Parameters<typeof startFaultProxy>[1], inFlightBytes = 64 * MIB) {
    await proxy?.close();
    client?.destroy();
    proxy = await startFaultProxy(s3.endpoint, decide);
    client = testS3Client(proxy.endpoint);
    fixtureCount += 1;
    const prefix = `faults-${fixtureCount}`;
    const store = createS3Store({ name: "s3", client, bucket: s3.bucket, prefix, partSize: PART_SIZE, inFlightBytes });
    return { store, proxy, prefix };
  }

  afterAll(async () => {
    client?.destroy();
    await proxy?.close();
  });

  it("retries parts answered 500 or cut off, and still completes a byte-identical object", async () => {
    const {
      store,
      proxy: faults,
      prefix,
    } = await storeBehind((part, attempt) => {
      if (attempt > 1) return "pass";
      return part === 2 ? "error-500" : part === 3 ? "drop" : "pass";
    });
    const data = pattern(5 * MIB, 3);
    const upload = await store.create("flaky.vma");
    await upload.write([data]);
    const ref = await upload.commit();
    expect(faults.partRequests.filter((request) => request.fault !== "pass")).toEqual([
      { partNumber: 2, fault: "error-500" },
      { partNumber: 3, fault: "drop" },
    ]);
    expect((await readBack(store, "flaky.vma")).equals(data)).toBe(true);
    expect(await objectKeys(s3Client, s3.bucket, `${prefix}/`)).toEqual(["flaky.vma"]);
    await store.remove(ref);
  });

  it("fails cleanly when a part keeps failing: no object, and abort removes the upload", async () => {
    const { store, prefix } = await storeBehind((part) => (part === 2 ? "error-500" : "pass"));
    const upload = await store.create("broken.vma");
    const written = (async () => {
      await upload.write([pattern(4 * MIB)]);
      return upload.commit();
    })();
    await expect(written).rejects.toMatchObject({ $metadata: { httpStatusCode: 500 } });
    await upload.abort();
    expect(await objectKeys(s3Client, s3.bucket, `${prefix}/`)).toEqual([]);
    expect(await uploadGone(s3Client, upload.pending)).toBe(true);
  });

  it("a zstd-compressed upload whose parts keep failing ends in a clean error and leaves nothing", async () => {
    const { store, prefix } = await storeBehind(() => "error-500");
    const upload = compressUpload(await store.create("broken.vma.zst"), { compression: "zstd" });
    const written = (async () => {
      for (let round = 0; round < 4; round += 1) await upload.write([randomBytes(MIB)]);
      return upload.commit();
    })();
    await expect(written).rejects.toMatchObject({ $metadata: { httpStatusCode: 500 } });
    await upload.abort();
    expect(await objectKeys(s3Client, s3.bucket, `${prefix}/`)).toEqual([]);
    expect(await uploadGone(s3Client, upload.pending)).toBe(true);
  });

  it("holds the parts in flight to its byte budget (back-pressure to the writer)", async () => {
    const { store, proxy: counted } = await storeBehind(() => "pass", 2 * PART_SIZE);
    const upload = await store.create("bounded.vma");
    for (let part = 0; part < 8; part += 1) await upload.write([pattern(PART_SIZE, part)]);
    const ref = await upload.commit();
    expect(counted.partRequests).toHaveLength(8);
    expect(counted.maxConcurrentParts()).toBeLessThanOrEqual(2);
    // Every part carried a CRC32 of exactly the bytes sent, for the server to check.
    expect(counted.partChecksums).toHaveLength(8);
    for (const part of counted.partChecksums) expect(part.header).toBe(part.body);
    await store.remove(ref);
  });

  it("a job killed with SIGKILL mid-upload leaves an upload its recorded id aborts", async () => {
    const { store } = await storeBehind(() => "pass");
    // A real process that starts an upload, prints its pending reference, and is killed mid-write.
    const script = `
      import { createS3Store } from "./src/stores/s3/s3-store.ts";
      import { testS3Client } from "./test/helpers/s3-server.ts";
      const store = createS3Store({ name: "s3", client: testS3Client(${JSON.stringify(s3.endpoint)}), bucket: ${JSON.stringify(s3.bucket)}, prefix: "killed", partSize: ${PART_SIZE} });
      const upload = await store.create("killed.vma");
      await upload.write([Buffer.alloc(${2 * PART_SIZE + 1})]);
      process.stdout.write(JSON.stringify(upload.pending) + "\\n");
      process.kill(process.pid, "SIGKILL");
    `;
    // Asynchronously: s3rver runs in this process and must answer the child.
    const child = await runToEnd(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script]);
    expect(child.stderr).toBe("");
    expect(child.signal).toBe("SIGKILL");
    const recorded = JSON.parse(child.stdout.trim()) as ArchiveRef;
    const killedStore = createS3Store({ name: "s3", client: s3Client, bucket: s3.bucket, prefix: "killed" });
    expect(await killedStore.listLeftovers([recorded])).toEqual([recorded]);
    expect(await killedStore.discardLeftover(recorded)).toBe("removed");
    expect(await uploadGone(s3Client, recorded)).toBe(true);
    expect(await objectKeys(s3Client, s3.bucket, "killed/")).toEqual([]);
    expect(store.name).toBe("s3");
  });
});

describe("local store specifics", () => {
  it("refuses a directory that resolves outside the store (a symlinked subdirectory)", async () => {
    const outside = await realpath(await mkdtemp(join(tmpdir(), "store-outside-")));
    try {
      const fixture = await localFixture();
      const directory = fixture.store.location("").replace(/\/$/, "");
      await symlink(outside, join(directory, "escape"));
      await expect(fixture.store.create("escape/x.vma")).rejects.toBeInstanceOf(ArchiveOutsideError);
      expect(await readdir(outside)).toEqual([]);
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it("refuses to commit after a failed background flush (issue 8), and abort leaves nothing", async () => {
    const directory = join(localRoot, "flush-fails");
    await mkdir(directory);
    let flushes = 0;
    const store = createLocalStore({
      name: "local",
      directory,
      fileOptions: {
        backgroundFlushBytes: MIB,
        datasync: async () => {
          flushes += 1;
          throw Object.assign(new Error("EIO: injected writeback error"), { code: "EIO" });
        },
      },
    });
    const upload = await store.create("flush.vma");
    await upload.write([pattern(2 * MIB)]);
    const more = upload.write([pattern(2 * MIB)]).then(() => upload.commit());
    await expect(more).rejects.toMatchObject({ code: "EIO" });
    expect(flushes).toBeGreaterThan(0);
    await upload.abort();
    expect(await readdir(directory)).toEqual([]);
  });

  it("a job that died between publishing and unlinking its partial name: committed, and only the partial name goes", async () => {
    const fixture = await localFixture();
    const upload = await fixture.store.create("half.vma");
    await upload.write([pattern(5000)]);
    const ref = await upload.commit();
    // The partial name linked to the published file again, as a crash after link() leaves it.
    await link(`${String(ref.path)}`, `${String(ref.path)}.partial`);
    expect(await fixture.store.findCommitted(upload.pending)).toEqual(ref);
    expect(await fixture.store.listLeftovers([upload.pending])).toEqual([upload.pending]);
    expect(await fixture.store.discardLeftover(upload.pending)).toBe("removed");
    expect(await fixture.names()).toEqual(["half.vma"]);
    expect((await readBack(fixture.store, "half.vma")).equals(pattern(5000))).toBe(true);
  });

  it("refuses a key whose directory does not exist, leaving nothing", async () => {
    const fixture = await localFixture();
    await expect(fixture.store.create("no/such/dir/x.vma")).rejects.toMatchObject({ code: "ENOENT" });
    expect(await fixture.names()).toEqual([]);
  });

  it("leaves a partial file that is not the one the job created", async () => {
    const fixture = await localFixture();
    const dead = await fixture.store.create("swapped.vma");
    const recorded = dead.pending;
    await dead.abort();
    await writeFile(`${recorded.path}.partial`, "another server's partial");
    await expect(fixture.store.discardLeftover(recorded)).rejects.toMatchObject({ why: "not-the-archive" });
    expect(await fixture.store.listLeftovers([recorded])).toEqual([]);
    expect(await fixture.names()).toEqual(["swapped.vma.partial"]);
  });
});

describe("compression stage failures", () => {
  it("a missing zstd program fails the upload with a message, and abort leaves nothing", async () => {
    const fixture = await localFixture();
    const emptyBin = join(localRoot, "empty-bin");
    await mkdir(emptyBin, { recursive: true });
    const path = process.env.PATH;
    process.env.PATH = emptyBin;
    let upload: ReturnType<typeof compressUpload>;
    try {
      upload = compressUpload(await fixture.store.create("nozstd.vma.zst"), { compression: "zstd" });
    } finally {
      process.env.PATH = path;
    }
    const written = (async () => {
      await upload.write([pattern(MIB)]);
      return upload.commit();
    })();
    await expect(written).rejects.toThrow(/zstd/);
    await upload.abort();
    expect(await fixture.names()).toEqual([]);
  });
});

describe("S3 store without its bucket or its upload", () => {
  it("reports a missing upload id as absent and a foreign upload as a leftover only by its own id", async () => {
    const created = await s3Client.send(new CreateMultipartUploadCommand({ Bucket: s3.bucket, Key: "other/x.vma" }));
    const store = createS3Store({ name: "s3", client: s3Client, bucket: s3.bucket, prefix: "other" });
    const fake: ArchiveRef = {
      store: "s3",
      bucket: s3.bucket,
      key: "other/x.vma",
      uploadId: "no-such-upload",
      token: "t",
    };
    expect(await store.listLeftovers([fake])).toEqual([]);
    expect(await store.discardLeftover(fake)).toBe("absent");
    await s3Client.send(
      new AbortMultipartUploadCommand({ Bucket: s3.bucket, Key: "other/x.vma", UploadId: created.UploadId }),
    );
  });
});
