// A directory opened once and checked where it really is, then used for every
// later file operation through /proc/self/fd/N (Linux's stand-in for the
// *at() system calls Node lacks). Swapping a path component for a symlink
// after the check cannot redirect those operations: they go to the directory
// that was opened and checked, wherever it has moved since.
import { constants, type FileHandle, open, readlink } from "node:fs/promises";
import { sep } from "node:path";
import { ArchiveOutsideError } from "./local-errors.js";

/** What Linux appends to the link of a descriptor whose directory was removed. */
const DELETED_SUFFIX = " (deleted)";

/** The directory an archive was being written in was renamed meanwhile. */
export class DirectoryMovedError extends Error {
  constructor(openedAt: string, nowAt: string) {
    super(`the directory ${openedAt} was moved to ${nowAt} while the archive was written; it was not kept`);
    this.name = "DirectoryMovedError";
  }
}

export class ConfinedDirectory {
  /** Where the opened directory really is (at open time). */
  readonly realPath: string;
  private readonly handle: FileHandle;

  private constructor(handle: FileHandle, realPath: string) {
    this.handle = handle;
    this.realPath = realPath;
  }

  /** Opens `path` and checks that it resolves to `root` or below; throws ArchiveOutsideError otherwise. */
  static async open(path: string, root: string): Promise<ConfinedDirectory> {
    const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      const realPath = await readlink(`/proc/self/fd/${handle.fd}`);
      if (realPath !== root && !realPath.startsWith(root.endsWith(sep) ? root : root + sep)) {
        throw new ArchiveOutsideError(realPath, root);
      }
      return new ConfinedDirectory(handle, realPath);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /** A path that names `name` inside the opened directory, whatever happens to its old path. */
  entry(name: string): string {
    return `/proc/self/fd/${this.handle.fd}/${name}`;
  }

  /**
   * Throws DirectoryMovedError when the directory was renamed (it or a
   * parent) since it was opened: a file published there would not be where
   * its path says. A removed directory passes; creating in it fails (ENOENT).
   */
  async assertNotMoved(): Promise<void> {
    const now = await readlink(`/proc/self/fd/${this.handle.fd}`);
    if (now !== this.realPath && !now.endsWith(DELETED_SUFFIX)) throw new DirectoryMovedError(this.realPath, now);
  }

  /** Makes new directory entries durable. */
  sync(): Promise<void> {
    return this.handle.sync();
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
