// A source file that returns EIO from some offset on, the way a dying disk
// does. Device-mapper's `error` target would be the classic tool, but this
// kernel has no device-mapper driver; the block layer gives the same EIO
// for any read past the end of a device. So: an ext4 image holding the file
// (written with debugfs, so none of it sits in the page cache), loop-mounted
// read-only, then the loop device shrunk under the mounted filesystem so
// that the file's later blocks lie beyond its end. Needs root.
import { execFile } from "node:child_process";
import { mkdir, rm, truncate, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

const FS_BLOCK = 4096;
const FILE_NAME = "disk.raw";

export interface FailingDisk {
  /** The source file, inside `mountDir`. */
  readonly file: string;
  /**
   * First byte of the file that cannot be read once broken. Reads fail at
   * or (rounded down to the kernel's read-ahead) before this offset.
   */
  readonly badOffset: number;
  /** Shrinks the device: from now on reads from `badOffset` on fail with EIO. */
  break(): Promise<void>;
  /** Unmounts and detaches everything. Safe to call twice. */
  dispose(): Promise<void>;
}

/** True when a free loop device can be found (root, and loop devices in this container). */
export async function canUseLoopDevices(): Promise<boolean> {
  return run("losetup", ["--find"]).then(
    () => true,
    () => false,
  );
}

interface Extent {
  readonly logical: number;
  readonly physical: number;
  readonly length: number;
}

/**
 * The extents of FILE_NAME, from `debugfs -R "ex ..."` lines such as " 0/ 0   1/  3     0 -     9     8 -    17
 * 10".
 */
async function extentsOf(image: string): Promise<Extent[]> {
  const { stdout } = await run("debugfs", ["-R", `ex ${FILE_NAME}`, image]);
  const extents: Extent[] = [];
  for (const line of stdout.split("\n")) {
    const match = /^\s*\d+\/\s*\d+\s+\d+\/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+(\d+)\s+-\s+(\d+)\s+(\d+)/.exec(line);
    if (match === null) continue;
    extents.push({ logical: Number(match[1]), physical: Number(match[3]), length: Number(match[5]) });
  }
  if (extents.length === 0) throw new Error(`no extents in debugfs output:\n${stdout}`);
  return extents;
}

/**
 * Puts `data` on a fresh ext4 filesystem mounted read-only on `mountDir`
 * (created if missing); `workDir` holds the image. After break(), the file
 * is readable up to about `failAt` (a fraction of its size) and fails with
 * EIO after.
 */
export async function makeFailingDisk(
  workDir: string,
  mountDir: string,
  data: Buffer,
  failAt: number,
): Promise<FailingDisk> {
  const image = path.join(workDir, "failing-disk.img");
  const content = path.join(workDir, "failing-disk.content");
  const fsBytes = Math.ceil((data.length + 4 * 1024 * 1024) / FS_BLOCK) * FS_BLOCK;
  await writeFile(content, data);
  await writeFile(image, "");
  await truncate(image, fsBytes);
  await run("mkfs.ext4", ["-q", "-F", "-b", String(FS_BLOCK), "-m", "0", "-O", "^has_journal", image]);
  await run("debugfs", ["-w", "-R", `write ${content} ${FILE_NAME}`, image]);
  await rm(content);

  // Cut the device at the physical block that holds logical block `cutLogical`;
  // the first unreadable byte is the lowest logical block at or past the cut.
  const extents = await extentsOf(image);
  const cutLogical = Math.floor((data.length / FS_BLOCK) * failAt);
  const holding = extents.find((extent) => cutLogical >= extent.logical && cutLogical < extent.logical + extent.length);
  if (holding === undefined) throw new Error(`logical block ${cutLogical} is in no extent`);
  const cutPhysical = holding.physical + (cutLogical - holding.logical);
  let firstBad = Infinity;
  for (const extent of extents) {
    const start = Math.max(extent.physical, cutPhysical);
    if (start < extent.physical + extent.length)
      firstBad = Math.min(firstBad, extent.logical + (start - extent.physical));
  }

  await mkdir(mountDir, { recursive: true });
  const { stdout } = await run("losetup", ["--find", "--show", image]);
  const loop = stdout.trim();
  let mounted = false;
  try {
    await run("mount", ["-t", "ext4", "-o", "ro", loop, mountDir]);
    mounted = true;
  } catch (error) {
    await run("losetup", ["--detach", loop]);
    throw error;
  }
  let disposed = false;
  return {
    file: path.join(mountDir, FILE_NAME),
    badOffset: firstBad * FS_BLOCK,
    async break() {
      await truncate(image, cutPhysical * FS_BLOCK);
      await run("losetup", ["--set-capacity", loop]);
    },
    async dispose() {
      if (disposed) return;
      disposed = true;
      if (mounted) await run("umount", [mountDir]);
      await run("losetup", ["--detach", loop]);
      await rm(image, { force: true });
    },
  };
}
