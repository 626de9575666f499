// The local-directory store: archives are files below one directory,
// written as `<name>.partial` (exclusive, no symlinks followed, background
// flush, fsync) and published by a hard link that never replaces a file
// (archive-file.ts). Every later look at a file goes through its directory,
// opened and checked to lie inside the store's directory (confinement), and
// a file counts as the job's only while it is the very file the job created:
// same device and inode and, where the filesystem keeps one, birth time.
import { constants, lstat, open, unlink } from "node:fs/promises";
import { posix } from "node:path";
import type { Readable } from "node:stream";
import {
  ArchiveExistsError,
  type ArchiveInfo,
  ArchiveKeptError,
  ArchiveMissingError,
  type ArchiveRef,
  type ArchiveStore,
  type ArchiveUpload,
  checkKey,
  type Removal,
  refField,
} from "../archive-store.js";
import { ArchiveFile, type ArchiveFileOptions, PARTIAL_SUFFIX } from "./archive-file.js";
import { ConfinedDirectory } from "./confined-directory.js";
import type { FileIdentity } from "./local-errors.js";

const KIND = "local";
const READ_CHUNK = 4 * 2 ** 20;

export interface LocalStoreOptions {
  /** The target name, e.g. "local". */
  readonly name: string;
  /** Real path of the directory every archive stays in (no trailing slash). */
  readonly directory: string;
  /** How archive files flush (fault tests change it). */
  readonly fileOptions?: ArchiveFileOptions;
}

export function createLocalStore(options: LocalStoreOptions): ArchiveStore {
  return new LocalDirectoryStore(options);
}

class LocalDirectoryStore implements ArchiveStore {
  readonly name: string;
  private readonly directory: string;
  private readonly fileOptions: ArchiveFileOptions;

  constructor(options: LocalStoreOptions) {
    this.name = options.name;
    this.directory = options.directory;
    this.fileOptions = options.fileOptions ?? {};
  }

  location(key: string): string {
    return posix.join(this.directory, key);
  }

  async create(key: string): Promise<ArchiveUpload> {
    checkKey(key);
    const path = this.location(key);
    let file: ArchiveFile;
    try {
      file = await ArchiveFile.create(path, this.directory, this.fileOptions);
    } catch (error) {
      if (codeOf(error) === "EEXIST") throw new ArchiveExistsError(path + PARTIAL_SUFFIX);
      throw error;
    }
    if (await file.finalNameTaken()) {
      await file.discard();
      throw new ArchiveExistsError(path);
    }
    return new LocalUpload(file);
  }

  async findCommitted(pending: ArchiveRef): Promise<ArchiveRef | undefined> {
    const path = refPath(pending);
    const identity = refIdentity(pending);
    return this.inDirectory(path, async (entry) => {
      const stats = await lstatOrUndefined(entry);
      if (stats === undefined || !stats.isFile() || !sameFile(stats, identity)) return undefined;
      return committedRef(path, identity, Number(stats.size));
    });
  }

  async stat(ref: ArchiveRef): Promise<ArchiveInfo | undefined> {
    const path = refPath(ref);
    return this.inDirectory(path, async (entry) => {
      const stats = await this.committedFile(ref, entry);
      if (stats === undefined) return undefined;
      return { size: Number(stats.size), modifiedAt: Number(stats.mtimeMs), location: path };
    });
  }

  async remove(ref: ArchiveRef): Promise<Removal> {
    const path = refPath(ref);
    const removal = await this.inDirectory(path, async (entry, directory): Promise<Removal> => {
      if ((await this.committedFile(ref, entry)) === undefined) return "absent";
      return unlinkEntry(entry, directory);
    });
    return removal ?? "absent";
  }

  async listLeftovers(held: readonly ArchiveRef[]): Promise<ArchiveRef[]> {
    const found: ArchiveRef[] = [];
    for (const pending of held) {
      if (pending.store !== KIND) continue;
      const partial = refPath(pending) + PARTIAL_SUFFIX;
      const ours = await this.inDirectory(partial, async (entry) => {
        const stats = await lstatOrUndefined(entry);
        return stats?.isFile() === true && sameFile(stats, refIdentity(pending));
      });
      if (ours === true) found.push(pending);
    }
    return found;
  }

  async discardLeftover(pending: ArchiveRef): Promise<Removal> {
    const partial = refPath(pending) + PARTIAL_SUFFIX;
    const identity = refIdentity(pending);
    return this.inDirectory(partial, async (entry, directory) => {
      const stats = await lstatOrUndefined(entry);
      if (stats === undefined) return "absent";
      if (!stats.isFile() || !sameFile(stats, identity)) {
        throw new ArchiveKeptError("not-the-archive", `${partial} is not the file the job created`);
      }
      return unlinkEntry(entry, directory);
    }).then((removal) => removal ?? "absent");
  }

  async read(key: string): Promise<Readable> {
    checkKey(key);
    const path = this.location(key);
    const handle = await this.inDirectory(path, async (entry) => {
      try {
        return await open(entry, constants.O_RDONLY | constants.O_NOFOLLOW);
      } catch (error) {
        if (codeOf(error) === "ENOENT") return undefined;
        throw error;
      }
    });
    if (handle === undefined) throw new ArchiveMissingError(path);
    return handle.createReadStream({ highWaterMark: READ_CHUNK, autoClose: true });
  }

  /**
   * The lstat of the committed file `ref` names at `entry`; undefined when
   * missing. ArchiveKeptError when it is not a regular file or not the file
   * committed (same device, inode, birth and size).
   */
  private async committedFile(ref: ArchiveRef, entry: string) {
    const identity = refIdentity(ref);
    const size = Number(refField(ref, "size"));
    const stats = await lstatOrUndefined(entry);
    if (stats === undefined) return undefined;
    const path = refPath(ref);
    if (!stats.isFile()) throw new ArchiveKeptError("not-a-file", `${path} is not a regular file`);
    if (!sameFile(stats, identity) || Number(stats.size) !== size) {
      throw new ArchiveKeptError("not-the-archive", `${path} has been replaced since the job wrote it`);
    }
    return stats;
  }

  /**
   * Runs `action` on the entry of `path` in its directory, opened and
   * confined to the store's directory; undefined when the directory is gone.
   */
  private async inDirectory<T>(
    path: string,
    action: (entry: string, directory: ConfinedDirectory) => Promise<T>,
  ): Promise<T | undefined> {
    if (!path.startsWith(`${this.directory}/`)) {
      throw new ArchiveKeptError("outside-store", `${path} is outside ${this.directory}`);
    }
    let directory: ConfinedDirectory;
    try {
      directory = await ConfinedDirectory.open(posix.dirname(path), this.directory);
    } catch (error) {
      if (codeOf(error) === "ENOENT") return undefined;
      if (codeOf(error) === "EXDEV_CONFINEMENT") throw new ArchiveKeptError("outside-store", (error as Error).message);
      throw error;
    }
    try {
      return await action(directory.entry(posix.basename(path)), directory);
    } finally {
      await directory.close();
    }
  }
}

class LocalUpload implements ArchiveUpload {
  readonly pending: ArchiveRef;
  private readonly file: ArchiveFile;

  constructor(file: ArchiveFile) {
    this.file = file;
    this.pending = { store: KIND, path: file.finalPath, ...file.identity };
  }

  get location(): string {
    return this.file.finalPath;
  }

  get bytesWritten(): number {
    return this.file.length;
  }

  write(chunks: readonly Uint8Array[]): Promise<void> {
    return this.file.write(chunks);
  }

  async commit(): Promise<ArchiveRef> {
    try {
      await this.file.commit();
    } catch (error) {
      if (codeOf(error) === "EEXIST") throw new ArchiveExistsError(this.file.finalPath);
      throw error;
    }
    return committedRef(this.file.finalPath, this.file.identity, this.file.length);
  }

  abort(): Promise<void> {
    return this.file.discard();
  }
}

function committedRef(path: string, identity: FileIdentity, size: number): ArchiveRef {
  return { store: KIND, path, ...identity, size: String(size) };
}

function refPath(ref: ArchiveRef): string {
  if (ref.store !== KIND) throw new ArchiveKeptError("bad-reference", `not a local archive reference: ${ref.store}`);
  const path = refField(ref, "path");
  if (!posix.isAbsolute(path)) throw new ArchiveKeptError("bad-reference", `${path} is not an absolute path`);
  return posix.normalize(path);
}

function refIdentity(ref: ArchiveRef): FileIdentity {
  return { dev: refField(ref, "dev"), ino: refField(ref, "ino"), born: refField(ref, "born") };
}

type BigStats = Awaited<ReturnType<typeof lstatBig>>;

function lstatBig(entry: string) {
  return lstat(entry, { bigint: true });
}

async function lstatOrUndefined(entry: string): Promise<BigStats | undefined> {
  try {
    return await lstatBig(entry);
  } catch (error) {
    if (codeOf(error) === "ENOENT") return undefined;
    throw error;
  }
}

/** Same device and inode and, where the filesystem keeps one, birth time: inode numbers are reused. */
function sameFile(stats: BigStats, identity: FileIdentity): boolean {
  if (String(stats.dev) !== identity.dev || String(stats.ino) !== identity.ino) return false;
  return identity.born === "0" || String(stats.birthtimeNs) === identity.born;
}

async function unlinkEntry(entry: string, directory: ConfinedDirectory): Promise<Removal> {
  try {
    await unlink(entry);
  } catch (error) {
    if (codeOf(error) === "ENOENT") return "absent";
    throw error;
  }
  await directory.sync();
  return "removed";
}

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}
