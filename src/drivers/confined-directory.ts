// A directory opened once and checked where it really is, then used for every
// later file operation through /proc/self/fd/N (Linux's stand-in for the
// *at() system calls Node lacks). Swapping a path component for a symlink
// after the check cannot redirect those operations: they go to the directory
// that was opened and checked, wherever it has moved since.
import { constants, type FileHandle, open, readlink } from "node:fs/promises";
import { sep } from "node:path";
import { ArchiveOutsideError } from "./driver.js";

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

  /** Makes new directory entries durable. */
  sync(): Promise<void> {
    return this.handle.sync();
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
