// `vmabackup vma list | config | verify | extract` as a user runs them: a real
// child process (node bin/vmabackup.js, from the repo root), checked by its
// stdout, stderr, exit code and the files it leaves.
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Writable } from "node:stream";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createProgressBar } from "../src/cli/progress-bar.js";
import { encodeExtentHeader } from "../src/vma/encode-extent.js";
import { encodeHeader } from "../src/vma/encode-header.js";
import { VmaWriter } from "../src/vma/writer.js";

const REPO = resolve(import.meta.dirname, "..");
const SAMPLE_GZ = resolve(REPO, "test/fixtures/pve-real-truncated-sample.vma.gz");
const CLUSTER = 65536;
const BLOCK = 4096;
const GiB10 = 10 * 1024 ** 3;
const SAMPLE_LIST = [
  "UUID: 04fc12eb-0fed-4322-9aaa-f4e412f68096",
  "CTIME: 2021-10-31T11:43:42Z (1635680622)",
  "CFG: size: 417 name: qemu-server.conf",
  "DEV: dev_id=1 size: 10737418240 devname: drive-scsi0",
  "",
].join("\n");
const SAMPLE_MISSING =
  "drive-scsi0: clusters 23-31, 55-63, 104-111, 120-127, 136-143, 151-159, 167-163839 missing (163724 of 163840)";
const CONFIG_SHA256 = "383cc8e9ab35d6a56b9a83b502263942253c807216c83eccae89a23ef040f950";

interface CliResult {
  readonly code: number | null;
  readonly stdout: Buffer;
  readonly stderr: string;
}

function vma(args: readonly string[], input?: Buffer, nodeArgs: readonly string[] = []): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, "bin/vmabackup.js", "vma", ...args], {
      cwd: REPO,
      stdio: ["pipe", "pipe", "pipe"],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    child.on("error", reject);
    child.on("close", (code) =>
      resolvePromise({ code, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr).toString("utf8") }),
    );
    child.stdin.on("error", () => undefined); // the tool may stop reading early (list)
    child.stdin.end(input);
  });
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** sha256 of a (large, sparse) file, reading the next 16 MiB while hashing the last. */
async function sha256File(path: string): Promise<string> {
  const file = await open(path, "r");
  try {
    const hash = createHash("sha256");
    const size = 16 * 1024 * 1024;
    const buffers = [Buffer.allocUnsafe(size), Buffer.allocUnsafe(size)];
    let position = 0;
    let turn = 0;
    let pending = file.read(buffers[0]!, 0, size, 0);
    for (;;) {
      const { bytesRead, buffer } = await pending;
      if (bytesRead === 0) break;
      position += bytesRead;
      turn += 1;
      pending = file.read(buffers[turn % 2]!, 0, size, position);
      hash.update(buffer.subarray(0, bytesRead));
    }
    return hash.digest("hex");
  } finally {
    await file.close();
  }
}

/**
 * sha256 of a sparse image without reading its holes: when every allocated
 * byte of the file is accounted for by nonzero 4 KiB blocks of its first
 * 16 MiB (nonzero data must be allocated), the rest of the file reads as
 * zeros, so only the hash of those zeros is computed. Otherwise reads it all.
 */
async function sha256SparseImage(path: string): Promise<string> {
  const { size, blocks } = await stat(path);
  const head = Buffer.alloc(Math.min(size, 16 * 1024 * 1024));
  const file = await open(path, "r");
  try {
    await file.read(head, 0, head.length, 0);
  } finally {
    await file.close();
  }
  let nonZeroBlocks = 0;
  const zeroBlock = Buffer.alloc(BLOCK);
  for (let offset = 0; offset < head.length; offset += BLOCK) {
    if (!head.subarray(offset, offset + BLOCK).equals(zeroBlock.subarray(0, Math.min(BLOCK, head.length - offset))))
      nonZeroBlocks += 1;
  }
  if (blocks * 512 > nonZeroBlocks * BLOCK) return sha256File(path);
  const hash = createHash("sha256").update(head);
  const zeros = Buffer.alloc(16 * 1024 * 1024);
  for (let offset = head.length; offset < size; offset += zeros.length)
    hash.update(zeros.subarray(0, Math.min(zeros.length, size - offset)));
  return hash.digest("hex");
}

/** Bytes the filesystem allocated for a file. */
async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

let root: string;
let sampleVma: string;
let sampleZst: string;
let small: string;
const smallDisks = {
  // 3 clusters + 512 bytes: the last cluster is partial; every other 4 KiB block is zero.
  "drive-a": Buffer.alloc(3 * CLUSTER + 512),
  // The second cluster stays all zero.
  "drive-b": Buffer.alloc(2 * CLUSTER),
};
const smallConfig = Buffer.from(
  "memory: 2048\n#qmdump#map:scsi0:drive-a:local:raw:\n#qmdump#map:scsi1:drive-b:local:raw:\n",
);

async function writeSmallArchive(path: string): Promise<void> {
  for (let block = 0; block * BLOCK < smallDisks["drive-a"].length; block += 2) {
    randomBytes(BLOCK).copy(smallDisks["drive-a"], block * BLOCK);
  }
  randomBytes(CLUSTER).copy(smallDisks["drive-b"], 0);
  const chunks: Uint8Array[] = [];
  const writer = new VmaWriter(
    { write: async (parts) => void chunks.push(...parts.map((part) => Uint8Array.from(part))) },
    { uuid: randomBytes(16) },
  );
  writer.addConfig("qemu-server.conf", smallConfig);
  const devIds = Object.entries(smallDisks).map(([name, data]) => writer.addDevice(name, data.length));
  for (const [index, data] of Object.values(smallDisks).entries()) {
    const devId = devIds[index]!;
    for (let cluster = 0; cluster * CLUSTER < data.length; cluster++) {
      const bytes = Buffer.alloc(CLUSTER);
      data.copy(bytes, 0, cluster * CLUSTER, (cluster + 1) * CLUSTER);
      let mask = 0;
      for (let block = 0; block < 16; block++) {
        if (!bytes.subarray(block * BLOCK, (block + 1) * BLOCK).equals(Buffer.alloc(BLOCK))) mask |= 1 << block;
      }
      await writer.writeCluster(devId, cluster, bytes, mask);
    }
    writer.completeDevice(devId);
  }
  await writer.finish();
  await writeFile(path, Buffer.concat(chunks));
}

// 4 clusters of which only 0 (all stored) and 2 (block 0 stored) are in the archive.
const incompleteCluster0 = randomBytes(CLUSTER);
const incompleteBlock = randomBytes(BLOCK);
let incomplete: string;

async function writeIncompleteArchive(path: string): Promise<void> {
  const uuid = randomBytes(16);
  const archive = Buffer.concat([
    encodeHeader({ uuid, ctime: 1700000000, configs: [], devices: [{ name: "drive-c", size: 4 * CLUSTER }] }),
    encodeExtentHeader(uuid, [{ devId: 1, clusterNum: 0, mask: 0xffff }]),
    incompleteCluster0,
    encodeExtentHeader(uuid, [{ devId: 1, clusterNum: 2, mask: 0x0001 }]),
    incompleteBlock,
  ]);
  await writeFile(path, archive);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "vmabackup-vma-tools-"));
  sampleVma = join(root, "sample.vma");
  await writeFile(sampleVma, gunzipSync(await readFile(SAMPLE_GZ)));
  sampleZst = join(root, "sample.vma.zst");
  // The zstd CLI (Debian package zstd; .ci/run installs it) makes the fixture, as vzdump would.
  execFileSync("zstd", ["-q", "-3", sampleVma, "-o", sampleZst]);
  small = join(root, "small.vma");
  await writeSmallArchive(small);
  incomplete = join(root, "incomplete.vma");
  await writeIncompleteArchive(incomplete);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

// Loaded before the command: at exit, prints each package the process loaded
// from node_modules to stderr, one "loaded PACKAGE" line each.
const PACKAGES_LOADED_HOOK = `data:text/javascript,${encodeURIComponent(`
  import { registerHooks } from "node:module";
  import { writeSync } from "node:fs";
  const packages = new Set();
  registerHooks({
    resolve(specifier, context, next) {
      const resolved = next(specifier, context);
      const match = /\\/node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(resolved.url);
      if (match) packages.add(match[1]);
      return resolved;
    },
  });
  process.on("exit", () => { for (const name of packages) writeSync(2, "loaded " + name + "\\n"); });
`)}`;

describe.concurrent("vma list and config", () => {
  it("loads neither the S3 client nor the gRPC stack for a local archive", async () => {
    const result = await vma(["list", SAMPLE_GZ], undefined, ["--import", PACKAGES_LOADED_HOOK]);
    expect(result.code).toBe(0);
    const loaded = result.stderr.split("\n").filter((line) => line.startsWith("loaded "));
    // The hook works: the command line parser is always loaded.
    expect(loaded).toContain("loaded commander");
    expect(loaded.filter((line) => /@aws-sdk|@smithy|@grpc|cli-progress|pino/.test(line))).toEqual([]);
  });

  it("lists the sample's uuid, ctime, config and device", async () => {
    const result = await vma(["list", SAMPLE_GZ]);
    expect(result.stderr).toBe("");
    expect(result.stdout.toString()).toBe(SAMPLE_LIST);
    expect(result.code).toBe(0);
  });

  it("lists as JSON, reading .vma.zst from stdin", async () => {
    const result = await vma(["list", "--json", "-"], await readFile(sampleZst));
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout.toString())).toEqual({
      uuid: "04fc12eb-0fed-4322-9aaa-f4e412f68096",
      ctime: 1635680622,
      ctimeIso: "2021-10-31T11:43:42Z",
      configs: [{ name: "qemu-server.conf", size: 417 }],
      devices: [{ devId: 1, name: "drive-scsi0", size: 10737418240, file: "disk-drive-scsi0.raw" }],
      problems: [],
    });
  });

  it("prints a config's raw bytes, the first one by default", async () => {
    const first = await vma(["config", sampleVma]);
    expect(first.code).toBe(0);
    expect(sha256(first.stdout)).toBe(CONFIG_SHA256);
    const missing = await vma(["config", sampleVma, "qemu-server.fw"]);
    expect(missing.code).toBe(2);
    expect(missing.stdout.length).toBe(0);
    expect(missing.stderr).toBe(
      "error: no config named qemu-server.fw in the archive; its configs: qemu-server.conf\n",
    );
  });

  it("refuses a file that is no archive with exit 1, a missing file and bad usage with exit 2", async () => {
    const foreign = join(root, "foreign.vma");
    await writeFile(foreign, Buffer.alloc(20000, 0x41));
    const notVma = await vma(["list", foreign]);
    expect(notVma.code).toBe(1);
    expect(notVma.stderr).toBe('offset 0: expected the VMA magic "56 4d 41 00", found "41 41 41 41"\n');

    const absent = await vma(["verify", join(root, "absent.vma")]);
    expect(absent.code).toBe(2);
    expect(absent.stderr).toMatch(/^error: ENOENT: no such file or directory/);

    const noArgument = await vma(["verify"]);
    expect(noArgument.code).toBe(2);
    expect(noArgument.stderr).toContain("missing required argument 'archive'");
  });
});

describe.concurrent("vma verify", () => {
  it("fails on the incomplete sample, naming the missing clusters", async () => {
    const result = await vma(["verify", SAMPLE_GZ]);
    expect(result.code).toBe(1);
    expect(result.stdout.toString()).toBe(
      `offset 538112: ${SAMPLE_MISSING}\n` +
        "FAIL problems=1 devices=1 configs=1 bytes=10737418240 extents=2 clusters=116 stored_blocks=128 " +
        "archive_bytes=538112\n",
    );
  });

  it("passes the sample with --allow-incomplete, warning about the missing clusters", async () => {
    const result = await vma(["verify", "--allow-incomplete", sampleZst]);
    expect(result.code).toBe(0);
    expect(result.stdout.toString()).toBe(
      "OK devices=1 configs=1 bytes=10737418240 extents=2 clusters=116 stored_blocks=128 archive_bytes=538112\n",
    );
    expect(result.stderr).toBe(`warning: ${SAMPLE_MISSING}\n`);
  });

  it("reports as JSON, from stdin", async () => {
    const result = await vma(["verify", "--json", "-"], await readFile(SAMPLE_GZ));
    expect(result.code).toBe(1);
    const report = JSON.parse(result.stdout.toString()) as Record<string, unknown>;
    expect(report).toMatchObject({
      ok: false,
      uuid: "04fc12eb-0fed-4322-9aaa-f4e412f68096",
      extents: 2,
      clusters: 116,
      problemCount: 1,
      problems: [{ offset: 538112, message: SAMPLE_MISSING }],
      missing: [{ devId: 1, name: "drive-scsi0", count: 163724 }],
    });
  });

  it("passes a complete archive and lists every problem of a damaged one with its offset", async () => {
    const good = await vma(["verify", small]);
    expect(good.code).toBe(0);
    // No terminal, no progress bar.
    expect(good.stderr).toBe("");
    expect(good.stdout.toString()).toMatch(
      /^OK devices=2 configs=1 bytes=328192 extents=1 clusters=6 stored_blocks=\d+ archive_bytes=\d+\n$/,
    );

    const damaged = Buffer.from(await readFile(small));
    const headerSize = damaged.readUInt32BE(56);
    damaged[headerSize + 40 + 8 * 2 + 7]! ^= 0xff; // a cluster number in the only extent header
    const damagedPath = join(root, "damaged.vma");
    await writeFile(damagedPath, Buffer.concat([damaged, Buffer.alloc(100)]));
    const result = await vma(["verify", damagedPath]);
    expect(result.code).toBe(1);
    const lines = result.stdout.toString().trimEnd().split("\n");
    expect(lines[0]).toMatch(new RegExp(`^offset ${headerSize}: extent header checksum mismatch: `));
    expect(lines[1]).toBe(
      `offset ${headerSize + 512}: ${damaged.length + 100 - headerSize - 512} bytes after the unreadable extent ` +
        `header at ${headerSize} up to the end of the archive were not read`,
    );
    expect(lines[2]).toBe(`offset ${damaged.length + 100}: drive-a: clusters 0-3 missing (4 of 4)`);
    expect(lines[3]).toBe(`offset ${damaged.length + 100}: drive-b: clusters 0-1 missing (2 of 2)`);
    expect(lines[4]).toMatch(/^FAIL problems=4 devices=2 /);
  });

  it("reports a truncated compressed archive as invalid", async () => {
    const gz = await readFile(SAMPLE_GZ);
    const result = await vma(["verify", "-"], gz.subarray(0, 40000));
    expect(result.code).toBe(1);
    expect(result.stdout.toString()).toMatch(
      /^offset \d+: gzip data is damaged or truncated after \d+ decompressed bytes: unexpected end of file\nFAIL problems=1 /,
    );
    const zst = await readFile(sampleZst);
    const cutZst = await vma(["verify", "-"], zst.subarray(0, zst.length - 1000));
    expect(cutZst.code).toBe(1);
    expect(cutZst.stdout.toString()).toMatch(/zstd data is damaged or truncated after \d+ decompressed bytes/);
  });

  it("draws a progress bar on a terminal", async () => {
    // script(1) gives the command a pseudo-terminal.
    const tty = execFileSync(
      "script",
      ["-q", "-e", "-c", `${process.execPath} bin/vmabackup.js vma verify ${small}`, "/dev/null"],
      {
        cwd: REPO,
        encoding: "utf8",
      },
    );
    expect(tty).toMatch(/verify \[[░█]+\]\s+\d+\.\d%/);
    expect(tty).toContain("OK devices=2");
  });
});

describe.concurrent("vma extract", () => {
  it("fails on the incomplete sample without --allow-incomplete and leaves no file", async () => {
    const dir = join(root, "sample-refused");
    const result = await vma(["extract", "--sparse", sampleVma, dir]);
    expect(result.code).toBe(1);
    expect(result.stdout.toString()).toBe(`offset 538112: ${SAMPLE_MISSING}\nFAIL problems=1 (nothing extracted)\n`);
    expect(await readdir(dir)).toEqual([]);
  });

  it("writes fully allocated, byte-identical images without --sparse", async () => {
    const dir = join(root, "small-full");
    const result = await vma(["extract", small, dir]);
    expect(result.code).toBe(0);
    expect((await readdir(dir)).sort()).toEqual(["disk-drive-a.raw", "disk-drive-b.raw", "qemu-server.conf"]);
    expect((await readFile(join(dir, "qemu-server.conf"))).equals(smallConfig)).toBe(true);
    for (const [name, data] of Object.entries(smallDisks)) {
      const path = join(dir, `disk-${name}.raw`);
      expect((await readFile(path)).equals(data), name).toBe(true);
      expect(await allocated(path), name).toBeGreaterThanOrEqual(Math.floor(data.length / BLOCK) * BLOCK);
    }
  });

  it("extracts only the chosen device with --device, sparse, from stdin", async () => {
    const dir = join(root, "small-b");
    const result = await vma(["extract", "--sparse", "--device", "drive-b", "-", dir], await readFile(small));
    expect(result.code).toBe(0);
    expect((await readdir(dir)).sort()).toEqual(["disk-drive-b.raw", "qemu-server.conf"]);
    const path = join(dir, "disk-drive-b.raw");
    expect((await readFile(path)).equals(smallDisks["drive-b"])).toBe(true);
    // The zero cluster is a hole.
    expect(await allocated(path)).toBeLessThan(2 * CLUSTER);

    const unknown = await vma(["extract", "--device", "drive-z", small, join(root, "small-z")]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toBe("error: no device named drive-z in the archive; its devices: drive-a, drive-b\n");
  });

  it("with --allow-incomplete, leaves missing clusters zero: written out, or holes with --sparse", async () => {
    const expected = Buffer.alloc(4 * CLUSTER);
    incompleteCluster0.copy(expected, 0);
    incompleteBlock.copy(expected, 2 * CLUSTER);
    for (const sparse of [false, true]) {
      const dir = join(root, `incomplete-${sparse ? "sparse" : "full"}`);
      const result = await vma(["extract", "--allow-incomplete", ...(sparse ? ["--sparse"] : []), incomplete, dir]);
      expect(result.code).toBe(0);
      expect(result.stderr).toBe("warning: drive-c: clusters 1, 3 missing (2 of 4)\n");
      const path = join(dir, "disk-drive-c.raw");
      expect((await readFile(path)).equals(expected)).toBe(true);
      if (sparse) expect(await allocated(path)).toBeLessThanOrEqual(CLUSTER + BLOCK);
      else expect(await allocated(path)).toBeGreaterThanOrEqual(4 * CLUSTER);
    }
  });

  it("never overwrites an existing file", async () => {
    const dir = join(root, "small-existing");
    await mkdir(dir);
    await writeFile(join(dir, "disk-drive-b.raw"), "keep me");
    const result = await vma(["extract", small, dir]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(
      /^error: EEXIST: file already exists, open '.*disk-drive-b\.raw' \(refusing to overwrite an existing file\)\n$/,
    );
    expect(await readFile(join(dir, "disk-drive-b.raw"), "utf8")).toBe("keep me");
    // What this run had created before the refusal is gone again.
    expect(await readdir(dir)).toEqual(["disk-drive-b.raw"]);
  });

  it("extracts the device, not a config named like its image file, and says how to get that config", async () => {
    // Another writer's archive: config "disk-drive-a.raw" beside device "drive-a".
    const uuid = randomBytes(16);
    const disk = randomBytes(CLUSTER);
    const chunks: Uint8Array[] = [];
    const writer = new VmaWriter(
      { write: async (parts) => void chunks.push(...parts.map((part) => Uint8Array.from(part))) },
      { uuid },
    );
    writer.addConfig("qemu-server.conf", smallConfig);
    writer.addConfig("disk-drive-a.raw", Buffer.from("not a disk\n"));
    writer.addDevice("drive-a", CLUSTER);
    await writer.writeCluster(1, 0, disk, 0xffff);
    writer.completeDevice(1);
    await writer.finish();
    const archive = join(root, "config-named-like-disk.vma");
    await writeFile(archive, Buffer.concat(chunks));

    const dir = join(root, "config-named-like-disk");
    const result = await vma(["extract", archive, dir]);
    expect(result.stderr).toBe(
      'warning: config "disk-drive-a.raw" not extracted: the image of device drive-a has that file name (print the config with: vma config ARCHIVE disk-drive-a.raw)\n',
    );
    expect(result.code).toBe(0);
    expect((await readdir(dir)).sort()).toEqual(["disk-drive-a.raw", "qemu-server.conf"]);
    expect((await readFile(join(dir, "disk-drive-a.raw"))).equals(disk)).toBe(true);
    expect((await vma(["config", archive, "disk-drive-a.raw"])).stdout.toString()).toBe("not a disk\n");
  });

  it("removes what it wrote when the archive turns out damaged", async () => {
    const archive = await readFile(small);
    const damagedPath = join(root, "trailing.vma");
    await writeFile(damagedPath, Buffer.concat([archive, Buffer.alloc(7)]));
    const dir = join(root, "small-damaged");
    const result = await vma(["extract", damagedPath, dir]);
    expect(result.code).toBe(1);
    expect(result.stdout.toString()).toBe(
      `offset ${archive.length}: the archive ends 7 bytes into an extent header; expected 512 bytes or the end of ` +
        `the archive\nFAIL problems=1 (nothing extracted)\n`,
    );
    expect(await readdir(dir)).toEqual([]);
  });
});

describe.concurrent("control characters in names", () => {
  // Another writer's archive: an OSC title sequence in the device name, a C1 CSI in a config name.
  const DEVICE = "drive\x1b]0;pwned\x07";
  const CONFIG = "qemu\u009b2J.conf";
  const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;
  let archive: string;

  beforeAll(async () => {
    const chunks: Uint8Array[] = [];
    const writer = new VmaWriter(
      { write: async (parts) => void chunks.push(...parts.map((part) => Uint8Array.from(part))) },
      { uuid: randomBytes(16) },
    );
    writer.addConfig(CONFIG, Buffer.from("memory: 512\n"));
    // 513 bytes: verify warns, naming the device.
    writer.addDevice(DEVICE, CLUSTER + 513);
    await writer.writeCluster(1, 0, randomBytes(CLUSTER), 0xffff);
    await writer.writeCluster(1, 1, Buffer.alloc(CLUSTER), 0);
    writer.completeDevice(1);
    await writer.finish();
    archive = join(root, "control-names.vma");
    await writeFile(archive, Buffer.concat(chunks));
  });

  it("escapes them in list, verify, extract and config output; list --json keeps them exact", async () => {
    const dir = join(root, "control-names-out");
    const [list, json, verify, extract, config] = await Promise.all([
      vma(["list", archive]),
      vma(["list", "--json", archive]),
      vma(["verify", archive]),
      vma(["extract", archive, dir]),
      vma(["config", archive, "absent.conf"]),
    ]);
    for (const result of [list, verify, extract, config]) {
      expect(result.stdout.toString()).not.toMatch(CONTROL);
      expect(result.stderr).not.toMatch(CONTROL);
    }
    expect(list.code).toBe(0);
    expect(list.stdout.toString()).toContain("CFG: size: 12 name: qemu\\x9b2J.conf\n");
    expect(list.stdout.toString()).toContain("devname: drive\\x1b]0;pwned\\x07\n");
    expect(verify.stderr).toContain("warning: drive\\x1b]0;pwned\\x07: size 66049");
    expect(extract.code).toBe(0);
    expect(extract.stdout.toString()).toContain("disk-drive\\x1b]0;pwned\\x07.raw\n");
    expect(config.code).toBe(2);
    expect(config.stderr).toContain("its configs: qemu\\x9b2J.conf");

    const exact = JSON.parse(json.stdout.toString()) as {
      configs: Array<{ name: string }>;
      devices: Array<{ name: string; file: string }>;
    };
    expect(exact.configs[0]?.name).toBe(CONFIG);
    expect(exact.devices[0]).toMatchObject({ name: DEVICE, file: `disk-${DEVICE}.raw` });
    // The files themselves carry the exact names.
    expect((await readdir(dir)).sort()).toEqual([`disk-${DEVICE}.raw`, CONFIG]);
  });
});

describe("vma extract of the 10 GiB sample image", () => {
  // Hashing 10 GiB takes seconds even without reading the holes, so this runs alone.
  it("extracts the sample with --allow-incomplete --sparse to the documented image", async () => {
    const dir = join(root, "sample-out");
    const result = await vma(["extract", "--sparse", "--allow-incomplete", SAMPLE_GZ, dir]);
    expect(result.code).toBe(0);
    expect(result.stderr).toBe(`warning: ${SAMPLE_MISSING}\n`);
    const disk = join(dir, "disk-drive-scsi0.raw");
    expect(result.stdout.toString()).toBe(
      `${join(dir, "qemu-server.conf")}\n${disk}\nOK files=2 devices=1 configs=1 bytes=10737418240 extents=2 ` +
        `clusters=116 stored_blocks=128 archive_bytes=538112\n`,
    );
    expect(sha256(await readFile(join(dir, "qemu-server.conf")))).toBe(CONFIG_SHA256);
    expect((await stat(disk)).size).toBe(GiB10);
    // 128 stored blocks, holes elsewhere.
    expect(await allocated(disk)).toBeLessThan(2 * 1024 * 1024);
    const file = await open(disk, "r");
    const head = Buffer.alloc(CLUSTER);
    await file.read(head, 0, CLUSTER, 0);
    await file.close();
    expect(sha256(head).slice(0, 8)).toBe("cf4adcf1");
    expect(sha256(head).slice(-4)).toBe("6b1f");
    expect(await sha256SparseImage(disk)).toBe("e572ef66633380b032f0bb164986ec732f8351041f342da68e235850fb6a3cdc");
    await rm(dir, { recursive: true });
  }, 120_000);
});

describe("createProgressBar", () => {
  function fakeTerminal(isTTY: boolean): { stream: NodeJS.WriteStream; output: () => string } {
    let written = "";
    const stream = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        written += chunk.toString();
        callback();
      },
    });
    Object.assign(stream, { isTTY, columns: 120 });
    return { stream: stream as unknown as NodeJS.WriteStream, output: () => written };
  }

  it("draws label, bar, percent and bytes on a terminal", async () => {
    const terminal = fakeTerminal(true);
    const bar = await createProgressBar({ label: "extract", total: 4 * 1024 * 1024, stream: terminal.stream });
    bar.update(2 * 1024 * 1024);
    bar.stop();
    expect(terminal.output()).toMatch(/extract \[[░█]+\]\s+0\.0%\s+0 B \/ 4\.0 MiB/);
    expect(terminal.output()).toMatch(/extract \[█+░+\]\s+50\.0%\s+2\.0 MiB \/ 4\.0 MiB/);
  });

  it("shows bytes only when the total is unknown, and nothing when not a terminal", async () => {
    const terminal = fakeTerminal(true);
    const bar = await createProgressBar({ label: "verify", total: undefined, stream: terminal.stream });
    bar.update(3 * 1024);
    bar.stop();
    expect(terminal.output()).toMatch(/verify 3\.0 KiB\s/);
    expect(terminal.output()).not.toContain("%");

    const pipe = fakeTerminal(false);
    const silent = await createProgressBar({ label: "verify", total: 100, stream: pipe.stream });
    silent.update(50);
    silent.stop();
    expect(pipe.output()).toBe("");
  });
});
