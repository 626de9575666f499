// Disk images served by a private qemu-storage-daemon: the chain is opened
// by us and handed to QEMU as descriptors, and what the export serves is the
// guest-visible disk, equal to `qemu-img convert -O raw` of the image.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LayerFile, resolveImageChain } from "../src/sources/image/image-chain.js";
import type { ImageFormat } from "../src/sources/image/image-format.js";
import { openImageSource } from "../src/sources/image/image-source.js";
import { sweepLeftoverExports } from "../src/sources/image/leftover-exports.js";
import { startImageExport } from "../src/sources/image/storage-daemon.js";
import { SourceRefusal } from "../src/sources/source-refusal.js";

let dir: string;

function run(command: string, ...args: string[]): string {
  return execFileSync(command, args, { cwd: dir, encoding: "utf8" });
}

function sha256(file: string): Promise<string> {
  return fs.readFile(file).then((data) => createHash("sha256").update(data).digest("hex"));
}

async function openLayer(name: string): Promise<LayerFile> {
  const realPath = await fs.realpath(path.resolve(dir, name));
  return { handle: await fs.open(realPath, "r"), realPath };
}

/** Opens backing files only inside `dir`, as the confined source opener does. */
async function openInsideDir(requested: string, field: string): Promise<LayerFile> {
  const realPath = await fs.realpath(requested);
  if (!realPath.startsWith(`${dir}/`)) {
    throw new SourceRefusal("permission-denied", "PATH_NOT_ALLOWED", `${field}: ${requested} is outside`, field);
  }
  return openLayer(realPath);
}

/** Serves `name` as `format` and returns the sha256 of what the export holds. */
async function servedHash(name: string, format: ImageFormat): Promise<string> {
  const top = await openLayer(name);
  const chain = await resolveImageChain(top, format, "devices[0].image", openInsideDir);
  const workDir = await fs.mkdtemp(path.join(dir, "qsd-"));
  const served = await startImageExport({ layers: chain.layers, workDir });
  try {
    const out = path.join(dir, `${name}.served`);
    run(
      "qemu-img",
      "convert",
      "-f",
      "raw",
      `nbd+unix:///${served.exportName}?socket=${served.socketPath}`,
      "-O",
      "raw",
      out,
    );
    expect((await fs.stat(out)).size).toBe(chain.virtualSize);
    return await sha256(out);
  } finally {
    await served.stop();
    await Promise.allSettled(chain.layers.map((layer) => layer.handle.close()));
    await expect(fs.access(workDir)).rejects.toThrow();
  }
}

async function convertedHash(name: string, format: ImageFormat): Promise<string> {
  const out = path.join(dir, `${name}.converted`);
  run("qemu-img", "convert", "-f", format, name, "-O", "raw", out);
  return sha256(out);
}

async function refusal(name: string, format: ImageFormat): Promise<SourceRefusal> {
  const top = await openLayer(name);
  try {
    await resolveImageChain(top, format, "devices[0].image", openInsideDir);
  } catch (error) {
    if (error instanceof SourceRefusal) return error;
    throw error;
  } finally {
    await top.handle.close();
  }
  throw new Error(`${name} was not refused`);
}

beforeAll(async () => {
  dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), "image-export-")));
  run("qemu-img", "create", "-q", "-f", "raw", "base.raw", "4M");
  run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x12 3M 64k", "base.raw");
  run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.raw", "top.qcow2");
  run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 512k 1M", "-c", "write -z 0 64k", "top.qcow2");
  for (const format of ["vmdk", "vdi"] as const) {
    run("qemu-img", "convert", "-f", "qcow2", "top.qcow2", "-O", format, `disk.${format}`);
  }
  // A raw guest disk that starts with a qcow2 header: raw it stays.
  run("qemu-img", "create", "-q", "-f", "qcow2", "inner.qcow2", "1M");
  await fs.copyFile(path.join(dir, "inner.qcow2"), path.join(dir, "looks-like-qcow2.raw"));
  await fs.truncate(path.join(dir, "looks-like-qcow2.raw"), 2 * 1024 * 1024);
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe("image export", () => {
  it("serves a qcow2 with a raw backing file as the guest sees it", async () => {
    expect(await servedHash("top.qcow2", "qcow2")).toBe(await convertedHash("top.qcow2", "qcow2"));
  });

  it.each(["vmdk", "vdi"] as const)("serves a %s image as the guest sees it", async (format) => {
    expect(await servedHash(`disk.${format}`, format)).toBe(await convertedHash(`disk.${format}`, format));
  });

  it("serves a raw file holding a qcow2 header as raw bytes when the client says raw", async () => {
    expect(await servedHash("looks-like-qcow2.raw", "raw")).toBe(await sha256(path.join(dir, "looks-like-qcow2.raw")));
  });

  it("refuses a format that does not match the image", async () => {
    const error = await refusal("base.raw", "qcow2");
    expect(error.reason).toBe("IMAGE_FORMAT_MISMATCH");
    expect(error.code).toBe("invalid-argument");
    expect(error.message).toContain("not in qcow2 format");
  });

  it("refuses a backing file outside the allowed directories", async () => {
    const outside = await fs.mkdtemp(path.join(os.tmpdir(), "image-outside-"));
    try {
      run("qemu-img", "create", "-q", "-f", "raw", path.join(outside, "secret.raw"), "1M");
      run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        path.join(outside, "secret.raw"),
        "escape.qcow2",
      );
      const error = await refusal("escape.qcow2", "qcow2");
      expect(error.reason).toBe("PATH_NOT_ALLOWED");
    } finally {
      await fs.rm(outside, { recursive: true, force: true });
    }
  });

  it("refuses a backing file whose format is not recorded, a protocol backing name, and an external data file", async () => {
    // Today's qemu-img always records it; an old one did not. Renaming the
    // header extension that holds it (QCOW2_EXT_MAGIC_BACKING_FORMAT) leaves
    // an extension QEMU skips, as in such an old image.
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.raw", "unrecorded.qcow2");
    const image = await fs.readFile(path.join(dir, "unrecorded.qcow2"));
    const at = image.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]));
    expect(at).toBeGreaterThan(0);
    image.writeUInt32BE(0x0badf00d, at);
    await fs.writeFile(path.join(dir, "unrecorded.qcow2"), image);
    expect((await refusal("unrecorded.qcow2", "qcow2")).reason).toBe("IMAGE_BACKING_FORMAT_UNKNOWN");

    run(
      "qemu-img",
      "create",
      "-q",
      "-f",
      "qcow2",
      "-u",
      "-F",
      "raw",
      "-b",
      "nbd://127.0.0.1:1/x",
      "remote.qcow2",
      "1M",
    );
    expect((await refusal("remote.qcow2", "qcow2")).reason).toBe("IMAGE_BACKING_UNSUPPORTED");

    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", "external.qcow2", "1M");
    expect((await refusal("external.qcow2", "qcow2")).reason).toBe("IMAGE_DATA_FILE_UNSUPPORTED");
  });

  it("refuses a backing chain that loops", async () => {
    run("qemu-img", "create", "-q", "-f", "qcow2", "loop-a.qcow2", "1M");
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", "loop-a.qcow2", "loop-b.qcow2", "1M");
    run("qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", "loop-b.qcow2", "loop-a.qcow2");
    expect((await refusal("loop-a.qcow2", "qcow2")).reason).toBe("IMAGE_BACKING_LOOP");
  });

  it("reports what qemu-storage-daemon said when it cannot start", async () => {
    const top = await openLayer("base.raw");
    const workDir = await fs.mkdtemp(path.join(dir, "qsd-"));
    try {
      const layers = [{ ...top, format: "qcow2" as const, takesBacking: true }];
      await expect(startImageExport({ layers, workDir })).rejects.toThrow(/not in qcow2 format/);
      await expect(fs.access(workDir)).rejects.toThrow();
    } finally {
      await top.handle.close();
    }
  });

  it("stops the daemons a crashed server left behind, and no other process", async () => {
    const imagesDir = await fs.mkdtemp(path.join(dir, "images-"));
    const top = await openLayer("base.raw");
    const workDir = path.join(imagesDir, "job-1");
    await fs.mkdir(workDir, { mode: 0o700 });
    const served = await startImageExport({ layers: [{ ...top, format: "raw", takesBacking: false }], workDir });
    const uri = `nbd+unix:///${served.exportName}?socket=${served.socketPath}`;
    const unrelated = path.join(imagesDir, "job-2");
    await fs.mkdir(unrelated);
    await fs.writeFile(path.join(unrelated, "qsd.pid"), `${process.pid}\n`);
    try {
      expect(run("nbdinfo", "--size", uri).trim()).toBe(String(4 * 1024 * 1024));
      expect(await sweepLeftoverExports(imagesDir)).toBe(1);
      expect(() => run("nbdinfo", "--size", uri)).toThrow();
      expect(await fs.readdir(imagesDir)).toEqual([]);
    } finally {
      await served.stop();
      await top.handle.close();
    }
  });

  it("reads the guest-visible disk through our NBD client, zero extents mapped", async () => {
    const workDir = await fs.mkdtemp(path.join(dir, "qsd-"));
    const source = await openImageSource({
      path: path.join(dir, "top.qcow2"),
      format: "qcow2",
      field: "devices[0].image",
      openFile: openInsideDir,
      workDir,
    });
    try {
      expect(source.kind).toBe("image");
      expect(source.location).toBe(`${path.join(dir, "top.qcow2")} (qcow2)`);
      const data = Buffer.alloc(source.size);
      await source.read(data, 0, data.length, 0);
      const expected = await fs.readFile(path.join(dir, "top.qcow2.converted"));
      expect(data.equals(expected)).toBe(true);
      const extents = await source.mapExtents?.(0, source.size);
      // The 64 KiB written as zeroes and the unwritten 1.5..3 MiB read as zero without reading.
      expect(extents?.[0]).toEqual({ offset: 0, length: 64 * 1024, zero: true });
      expect(
        extents?.some(
          (extent) => extent.zero && extent.offset <= 1.5 * 2 ** 20 && extent.offset + extent.length >= 3 * 2 ** 20,
        ),
      ).toBe(true);
    } finally {
      await source.close();
    }
    await expect(fs.access(workDir)).rejects.toThrow();
  });
});
