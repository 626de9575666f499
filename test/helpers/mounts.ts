// Small filesystems for fault tests: a size-limited tmpfs (fills up with
// ENOSPC) and an ext4 loop filesystem that can be made to fail read-only
// mid-write. They need root; canMount() says whether this machine allows
// them.
import { execFile } from "node:child_process";
import { mkdtemp, rm, rmdir, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

let mountAllowed: Promise<boolean> | undefined;

/** True when this process may mount filesystems (root, and not forbidden by a container). */
export function canMount(): Promise<boolean> {
  mountAllowed ??= (async () => {
    if (process.getuid?.() !== 0) return false;
    const probe = await mkdtemp(path.join(os.tmpdir(), "vmabackup-mount-probe-"));
    try {
      await run("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", probe]);
      await run("umount", [probe]);
      return true;
    } catch {
      return false;
    } finally {
      await rmdir(probe).catch(() => undefined);
    }
  })();
  return mountAllowed;
}

/** Mounts a tmpfs of `bytes` on `dir` (which hides what `dir` held until unmount). */
export async function mountTmpfs(dir: string, bytes: number): Promise<void> {
  await run("mount", ["-t", "tmpfs", "-o", `size=${bytes},mode=0755`, "tmpfs", dir]);
}

/** An ext4 filesystem on a loop device, mounted so that any filesystem error makes it read-only. */
export interface LoopFilesystem {
  /**
   * Makes the filesystem read-only at once, the way a disk error does
   * (ext4 errors=remount-ro, triggered through sysfs): writes, creates and
   * unlinks fail with EROFS from now on, also through open descriptors.
   */
  failReadOnly(): Promise<void>;
  /** What an operator does after the fault: unmount and mount it again, writable. */
  remount(): Promise<void>;
  /** Unmounts and detaches. Safe to call twice. */
  dispose(): Promise<void>;
}

/** Makes an ext4 filesystem of `bytes` in `workDir` and mounts it on `dir`. */
export async function mountLoopFilesystem(workDir: string, dir: string, bytes: number): Promise<LoopFilesystem> {
  const image = path.join(workDir, `loop-fs-${path.basename(dir)}.img`);
  await run("truncate", ["-s", String(bytes), image]);
  await run("mkfs.ext4", ["-q", "-F", "-m", "0", image]);
  const loop = (await run("losetup", ["--find", "--show", image])).stdout.trim();
  const mount = (): Promise<unknown> => run("mount", ["-t", "ext4", "-o", "errors=remount-ro", loop, dir]);
  try {
    await mount();
  } catch (error) {
    await run("losetup", ["--detach", loop]);
    throw error;
  }
  let disposed = false;
  return {
    async failReadOnly() {
      // Commit what was written so far, as ext4 does every few seconds: a job
      // that ran a while has its partial file on disk when the error comes.
      await run("sync", ["-f", dir]);
      await writeFile(`/sys/fs/ext4/${path.basename(loop)}/trigger_fs_error`, "vmabackup fault test\n");
    },
    async remount() {
      await run("umount", [dir]);
      await mount();
    },
    async dispose() {
      if (disposed) return;
      disposed = true;
      if (await isMountPoint(dir)) await run("umount", [dir]);
      await run("losetup", ["--detach", loop]);
      await rm(image, { force: true });
    },
  };
}

/** Unmounts the topmost mount on `dir`. */
export async function unmount(dir: string): Promise<void> {
  await run("umount", [dir]);
}

/** True when something is mounted exactly on `dir`. */
export async function isMountPoint(dir: string): Promise<boolean> {
  const { stdout } = await run("findmnt", ["--noheadings", "--mountpoint", dir]).catch(() => ({ stdout: "" }));
  return stdout.trim() !== "";
}
