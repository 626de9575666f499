// The VMA driver writing through a local store's upload (store behaviour
// itself is in store-conformance.test.ts), its plan checks, and the local
// store's ArchiveFile underneath.
import { createHash } from "node:crypto";
import { link, lstat, mkdir, mkdtemp, readFile, readdir, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ArchiveLimitError, type BackupTarget } from "../src/drivers/driver.js";
import { vmaDriver } from "../src/drivers/vma-driver.js";
import { ArchiveExistsError } from "../src/stores/archive-store.js";
import { ArchiveFile, publishWithoutOverwrite } from "../src/stores/local/archive-file.js";
import { ArchiveOutsideError } from "../src/stores/local/local-errors.js";
import { createLocalStore } from "../src/stores/local/local-store.js";
import { CLUSTER_SIZE } from "../src/vma/constants.js";

const UUID = "00112233-4455-6677-8899-aabbccddeeff";

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "vma-driver-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const exists = (path: string): Promise<boolean> =>
  lstat(path).then(
    () => true,
    () => false,
  );

/** The VMA target of archive `key` in a local store over the test's directory. */
async function openTarget(key: string): Promise<BackupTarget> {
  const store = createLocalStore({ name: "local", directory: dir });
  return vmaDriver.openUpload(await store.create(key), { uuid: UUID });
}

/** Writes the worked example of docs/vma-format.md section 9 through a target. */
async function writeExample(target: BackupTarget): Promise<void> {
  target.registerConfig("qemu-server.conf", Buffer.from("memory: 512\n"));
  const devId = target.registerDevice("drive-scsi0", 2 * CLUSTER_SIZE);
  await target.writeCluster(devId, 0, new Uint8Array(CLUSTER_SIZE).fill(0xab), 0xffff);
  await target.writeCluster(devId, 1, new Uint8Array(CLUSTER_SIZE), 0);
  await target.completeDevice(devId);
}

describe("vmaDriver", () => {
  it("names its format and suffix", () => {
    expect(vmaDriver.format).toBe("vma");
    expect(vmaDriver.fileSuffix).toBe(".vma");
  });

  it("writes the worked example under the partial name and shows the final name only after close", async () => {
    const path = join(dir, "vzdump-qemu-100.vma");
    const target = await openTarget("vzdump-qemu-100.vma");
    expect(target.location).toBe(path);
    expect(await exists(`${path}.partial`)).toBe(true);
    await writeExample(target);
    expect(await exists(path)).toBe(false);
    await target.close();
    expect(await exists(path)).toBe(true);
    expect(await exists(`${path}.partial`)).toBe(false);
    const file = await readFile(path);
    expect(target.bytesWritten).toBe(file.byteLength);
    // Everything but ctime and the header md5 is fixed; the extent is byte-identical.
    expect(file.byteLength).toBe(78848);
    expect(file.subarray(8, 24).toString("hex")).toBe("00112233445566778899aabbccddeeff");
    expect(file.subarray(12800 + 24, 12800 + 40).toString("hex")).toBe("4fb5f0bb3d21d1e2ecabc7e54d872a38");
    const header = Buffer.from(file.subarray(0, 12800));
    const headerMd5 = header.subarray(32, 48).toString("hex");
    header.fill(0, 32, 48);
    expect(createHash("md5").update(header).digest("hex")).toBe(headerMd5);
    // abort after a successful close must not touch the archive.
    await target.abort();
    expect(await exists(path)).toBe(true);
  });

  it("refuses to overwrite an archive that appeared meanwhile, and abort then leaves only that one", async () => {
    const path = join(dir, "taken.vma");
    const target = await openTarget("taken.vma");
    await writeExample(target);
    await writeFile(path, "someone else's archive");
    await expect(target.close()).rejects.toBeInstanceOf(ArchiveExistsError);
    expect(await readFile(path, "utf8")).toBe("someone else's archive");
    await target.abort();
    expect(await readdir(dir)).toEqual(["taken.vma"]);
    expect(await readFile(path, "utf8")).toBe("someone else's archive");
  });

  it("abort removes what was written and may be called again; the target is unusable after it", async () => {
    const target = await openTarget("aborted.vma");
    target.registerConfig("qemu-server.conf", Buffer.from("memory: 512\n"));
    const devId = target.registerDevice("drive-scsi0", 200 * CLUSTER_SIZE);
    const data = new Uint8Array(CLUSTER_SIZE).fill(1);
    for (let clusterNum = 0; clusterNum < 120; clusterNum++) await target.writeCluster(devId, clusterNum, data, 0xffff);
    await target.abort();
    await target.abort();
    expect(await readdir(dir)).toEqual([]);
    await expect(target.writeCluster(devId, 120, data, 0xffff)).rejects.toThrow(/aborted/);
    await expect(target.close()).rejects.toThrow(/aborted/);
    expect(await readdir(dir)).toEqual([]);
  });

  it("commits nothing when a device is incomplete", async () => {
    const path = join(dir, "incomplete.vma");
    const target = await openTarget("incomplete.vma");
    const devId = target.registerDevice("drive-scsi0", 2 * CLUSTER_SIZE);
    await target.writeCluster(devId, 0, new Uint8Array(CLUSTER_SIZE), 0);
    await expect(target.completeDevice(devId)).rejects.toThrow(/cluster 1 was not written/);
    await expect(target.close()).rejects.toThrow(/was not completed/);
    expect(await exists(path)).toBe(false);
    await target.abort();
    expect(await readdir(dir)).toEqual([]);
  });

  it("refuses a bad uuid before anything is written", async () => {
    const store = createLocalStore({ name: "local", directory: dir });
    const upload = await store.create("a.vma");
    expect(() => vmaDriver.openUpload(upload, { uuid: "not-a-uuid" })).toThrow(TypeError);
    await upload.abort();
    expect(await readdir(dir)).toEqual([]);
  });

  it("maps format limits of registered configs and devices to ArchiveLimitError", async () => {
    const target = await openTarget("limits.vma");
    expect(() => target.registerConfig("big.conf", new Uint8Array(70000))).toThrow(ArchiveLimitError);
    expect(() => target.registerDevice("drive scsi0", CLUSTER_SIZE)).toThrow(
      expect.objectContaining({ field: "devices[0].name" }),
    );
    await target.abort();
  });
});

describe("vmaDriver.checkPlan", () => {
  const fieldOf = (action: () => void): string => {
    try {
      action();
    } catch (error) {
      expect(error).toBeInstanceOf(ArchiveLimitError);
      return (error as ArchiveLimitError).field;
    }
    throw new Error("expected an ArchiveLimitError");
  };
  const disk = { name: "drive-scsi0", size: CLUSTER_SIZE };

  it("accepts a plan that fits", () => {
    expect(() =>
      vmaDriver.checkPlan({ configs: [{ name: "qemu-server.conf", size: 65535 }], devices: [disk] }),
    ).not.toThrow();
  });

  it("names the field at fault", () => {
    const small = { name: "a.conf", size: 10 };
    expect(
      fieldOf(() =>
        vmaDriver.checkPlan({
          configs: [small, { name: "b.conf", size: 10 }, { name: "c.conf", size: 65536 }],
          devices: [disk],
        }),
      ),
    ).toBe("configs[2].data");
    const big = Array.from({ length: 8 }, (_, index) => ({ name: `c${index}.conf`, size: 65535 }));
    expect(fieldOf(() => vmaDriver.checkPlan({ configs: big, devices: [disk] }))).toBe("configs");
    const devices = Array.from({ length: 255 }, (_, index) => ({ name: `drive-virtio${index}`, size: CLUSTER_SIZE }));
    expect(fieldOf(() => vmaDriver.checkPlan({ configs: [], devices }))).toBe("devices");
    expect(fieldOf(() => vmaDriver.checkPlan({ configs: [], devices: [disk, { name: "drive-scsi1", size: 0 }] }))).toBe(
      "devices[1].size",
    );
    expect(fieldOf(() => vmaDriver.checkPlan({ configs: [{ name: "a/b", size: 1 }], devices: [] }))).toBe(
      "configs[0].name",
    );
  });
});

describe("ArchiveFile", () => {
  it("creates its partial file exclusively, mode 0640 less the umask, and fails with EEXIST when it exists", async () => {
    const file = await ArchiveFile.create(join(dir, "new.vma"), dir);
    expect(file.partialPath).toBe(join(dir, "new.vma.partial"));
    expect((await lstat(file.partialPath)).mode & 0o7777).toBe(0o640 & ~process.umask());
    await file.discard();
    const path = join(dir, "busy.vma");
    await writeFile(`${path}.partial`, "another job");
    await expect(ArchiveFile.create(path, dir)).rejects.toMatchObject({ code: "EEXIST" });
    expect(await readFile(`${path}.partial`, "utf8")).toBe("another job");
  });

  it("does not follow a symlink at the partial path, dangling or not", async () => {
    const path = join(dir, "link.vma");
    const victim = join(dir, "victim");
    await writeFile(victim, "precious");
    await symlink(victim, `${path}.partial`);
    await expect(ArchiveFile.create(path, dir)).rejects.toMatchObject({ code: "EEXIST" });
    const dangling = join(dir, "dangling.vma");
    await symlink(join(dir, "nowhere"), `${dangling}.partial`);
    await expect(ArchiveFile.create(dangling, dir)).rejects.toMatchObject({ code: "EEXIST" });
    expect(await exists(join(dir, "nowhere"))).toBe(false);
    expect(await readFile(victim, "utf8")).toBe("precious");
  });

  it("fails with the fs error when the directory is missing, creating nothing", async () => {
    await expect(ArchiveFile.create(join(dir, "missing", "a.vma"), dir)).rejects.toMatchObject({ code: "ENOENT" });
    expect(await readdir(dir)).toEqual([]);
  });

  it("refuses a directory that resolves outside its confinement, creating nothing", async () => {
    const inside = join(dir, "backups");
    const outside = join(dir, "elsewhere");
    await mkdir(inside);
    await mkdir(outside);
    await symlink(outside, join(inside, "sub"));
    await expect(ArchiveFile.create(join(inside, "sub", "a.vma"), inside)).rejects.toBeInstanceOf(ArchiveOutsideError);
    expect(await readdir(outside)).toEqual([]);
  });

  it("keeps writing into the directory it checked when a path component is swapped for a symlink", async () => {
    const inside = join(dir, "backups");
    const outside = join(dir, "elsewhere");
    await mkdir(join(inside, "vm100"), { recursive: true });
    await mkdir(outside);
    const file = await ArchiveFile.create(join(inside, "vm100", "a.vma"), inside);
    await rename(join(inside, "vm100"), join(inside, "moved"));
    await symlink(outside, join(inside, "vm100"));
    await file.write([Uint8Array.of(1, 2, 3)]);
    expect(await readdir(join(inside, "moved"))).toEqual(["a.vma.partial"]);
    // Published in the moved directory, the archive would not be at its path: refused.
    await expect(file.commit()).rejects.toThrow(
      `the directory ${join(inside, "vm100")} was moved to ${join(inside, "moved")} while the archive was written; ` +
        `it was not kept`,
    );
    await file.discard();
    expect(await readdir(outside)).toEqual([]);
    expect(await readdir(join(inside, "moved"))).toEqual([]);
    await writeFile(join(inside, "moved", "a.vma"), "kept");

    const discarded = await ArchiveFile.create(join(inside, "moved", "b.vma"), inside);
    await rename(join(inside, "moved"), join(inside, "moved-again"));
    await symlink(outside, join(inside, "moved"));
    await discarded.discard();
    expect(await readdir(join(inside, "moved-again"))).toEqual(["a.vma"]);
    expect(await readdir(outside)).toEqual([]);
  });

  it("refuses to commit after a failed background flush, although the final fsync succeeds", async () => {
    // Linux reports a writeback error to one fdatasync only; the fsync after it returns 0.
    const eio = Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
    const file = await ArchiveFile.create(join(dir, "lost.vma"), dir, {
      backgroundFlushBytes: 1,
      datasync: () => Promise.reject(eio),
    });
    await file.write([Uint8Array.of(1, 2, 3)]);
    await expect(file.commit()).rejects.toBe(eio);
    expect(await exists(join(dir, "lost.vma"))).toBe(false);
    await file.discard();
    expect(await readdir(dir)).toEqual([]);
  });

  it("splits more than IOV_MAX chunks and keeps their order", async () => {
    const file = await ArchiveFile.create(join(dir, "many.bin"), dir);
    const chunks = Array.from({ length: 2500 }, (_, index) => Uint8Array.of(index & 0xff, index >> 8));
    await file.write(chunks);
    await file.write([Uint8Array.of(0xee), new Uint8Array(0)]);
    expect(file.length).toBe(5001);
    await file.commit();
    const written = await readFile(join(dir, "many.bin"));
    expect(written.equals(Buffer.concat([...chunks, Uint8Array.of(0xee)]))).toBe(true);
  });

  it("keeps overlapping writes in call order", async () => {
    const file = await ArchiveFile.create(join(dir, "order.bin"), dir);
    const first = new Uint8Array(1 << 20).fill(1);
    const second = new Uint8Array(1 << 20).fill(2);
    await Promise.all([file.write([first]), file.write([second])]);
    await file.commit();
    const written = await readFile(join(dir, "order.bin"));
    expect(written.equals(Buffer.concat([first, second]))).toBe(true);
  });

  it("refuses writes after discard, and discard is idempotent even when the file is gone", async () => {
    const file = await ArchiveFile.create(join(dir, "gone.bin"), dir);
    await rm(file.partialPath);
    await file.discard();
    await file.discard();
    await expect(file.write([Uint8Array.of(1)])).rejects.toThrow(/no longer open/);
    await expect(file.commit()).rejects.toThrow(/discarded/);
  });

  it("publishes with rename only where hard links are unsupported, still never overwriting", async () => {
    const noLinks = async (): Promise<void> => {
      throw Object.assign(new Error("EPERM: operation not permitted, link"), { code: "EPERM" });
    };
    await writeFile(join(dir, "a.partial"), "a");
    await publishWithoutOverwrite(join(dir, "a.partial"), join(dir, "a"), noLinks);
    expect(await readdir(dir)).toEqual(["a"]);

    await writeFile(join(dir, "b.partial"), "new");
    await writeFile(join(dir, "b"), "old");
    await expect(publishWithoutOverwrite(join(dir, "b.partial"), join(dir, "b"), noLinks)).rejects.toMatchObject({
      code: "EEXIST",
    });
    expect(await readFile(join(dir, "b"), "utf8")).toBe("old");
    expect(await readFile(join(dir, "b.partial"), "utf8")).toBe("new");
  });

  it("passes other link errors through", async () => {
    await mkdir(join(dir, "sub"));
    await writeFile(join(dir, "c.partial"), "c");
    await expect(
      publishWithoutOverwrite(join(dir, "c.partial"), join(dir, "sub", "missing", "c"), link),
    ).rejects.toMatchObject({ code: "ENOENT" });
    expect(await exists(join(dir, "c.partial"))).toBe(true);
  });
});
