// Where a job may read and write. Every decision is made on real paths
// (symlinks and `..` resolved): the roots are resolved once at startup, a
// source is judged by the path of the file actually opened (see
// src/sources/file/file-source.ts) and the archive by the real path of its directory.
// A lexical check comes first so that a path plainly outside the allowed
// directories is refused without touching it.
import { realpathSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { EngineError } from "./errors.js";
import { pathDestination } from "./path-destination.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import { errnoOf } from "./errno.js";
import type { SourceConfinement } from "../sources/source-confinement.js";

/** An allowed directory, as configured (made absolute) and as resolved. */
interface Root {
  readonly configured: string;
  readonly real: string;
}

/** True when `candidate` is `root` or lies below it (both absolute and normalized). */
export function isInside(root: string, candidate: string): boolean {
  if (candidate === root) return true;
  const prefix = root.endsWith(path.sep) ? root : root + path.sep;
  return candidate.startsWith(prefix);
}

function resolveRoot(directory: string, what: string): Root {
  const configured = path.resolve(directory);
  try {
    return { configured, real: realpathSync(configured) };
  } catch (error) {
    throw new Error(`${what} ${configured} cannot be resolved: ${(error as Error).message}`, { cause: error });
  }
}

export class PathPolicy implements SourceConfinement {
  private readonly backupRoot: Root;
  private readonly sourceRoots: readonly Root[];

  /** Throws when a directory does not exist: that is a configuration error. */
  constructor(backupDir: string, sourceRoots: readonly string[]) {
    this.backupRoot = resolveRoot(backupDir, "backup dir");
    this.sourceRoots = sourceRoots.map((root) => resolveRoot(root, "source root"));
  }

  /** The real path of the backup directory. */
  get backupDir(): string {
    return this.backupRoot.real;
  }

  /**
   * The absolute path a device path names: relative paths resolve under the
   * first source root. Undefined when it is plainly (before resolving
   * symlinks) outside every source root.
   */
  requestedSource(devicePath: string): string | undefined {
    const base = this.sourceRoots[0]?.configured;
    const requested = base === undefined ? path.resolve(devicePath) : path.resolve(base, devicePath);
    const inside = this.sourceRoots.some(
      (root) => isInside(root.configured, requested) || isInside(root.real, requested),
    );
    return inside ? requested : undefined;
  }

  /** True when a real (resolved) path lies inside a source root. */
  isSourceAllowed(realPath: string): boolean {
    return this.sourceRoots.some((root) => isInside(root.real, realPath));
  }

  /**
   * True when `requested` (absolute), which could not be resolved, leads
   * outside every source root: it is then refused as outside whether or not
   * it exists, so that the refusal tells nothing about what is out there.
   */
  async leadsOutsideSourceRoots(requested: string): Promise<boolean> {
    return !this.isSourceAllowed(await pathDestination(requested));
  }

  /**
   * The final absolute path of the archive: `backupFile` resolved under the
   * backup dir, its directory's real path inside the backup dir, and no
   * entry of any kind (a dangling symlink included) at that name.
   */
  async resolveBackupFile(backupFile: string): Promise<string> {
    const field = "backup_file";
    const notAllowed = (): EngineError =>
      new EngineError(
        "permission-denied",
        REASON.PATH_NOT_ALLOWED,
        `${field}: ${quote(backupFile)} is outside the backup directory`,
        field,
      );
    const requested = path.resolve(this.backupRoot.configured, backupFile);
    if (!isInside(this.backupRoot.configured, requested) && !isInside(this.backupRoot.real, requested)) {
      throw notAllowed();
    }

    let directory: string;
    try {
      directory = await fs.realpath(path.dirname(requested));
    } catch (error) {
      // A directory outside that does not exist is as outside as one that does.
      if (!isInside(this.backupRoot.real, await pathDestination(path.dirname(requested)))) throw notAllowed();
      throw this.directoryError(backupFile, error);
    }
    if (!isInside(this.backupRoot.real, directory)) throw notAllowed();

    const finalPath = path.join(directory, path.basename(requested));
    try {
      await fs.lstat(finalPath);
    } catch (error) {
      if (errnoOf(error) === "ENOENT") return finalPath;
      throw this.directoryError(backupFile, error);
    }
    throw new EngineError("already-exists", REASON.BACKUP_FILE_EXISTS, `${field}: ${finalPath} already exists`, field);
  }

  private directoryError(backupFile: string, error: unknown): EngineError {
    const field = "backup_file";
    const code = errnoOf(error);
    if (code === "ENOENT" || code === "ENOTDIR") {
      return new EngineError(
        "failed-precondition",
        REASON.BACKUP_DIR_NOT_FOUND,
        `${field}: the directory of ${quote(backupFile)} does not exist`,
        field,
      );
    }
    if (code === "ELOOP") {
      return new EngineError(
        "failed-precondition",
        REASON.BACKUP_DIR_NOT_FOUND,
        `${field}: the directory of ${quote(backupFile)} is a symlink loop`,
        field,
      );
    }
    if (code === "ENAMETOOLONG") {
      return new EngineError(
        "invalid-argument",
        REASON.BACKUP_FILE_INVALID,
        `${field}: ${quote(backupFile)} is too long (a file name holds at most 255 bytes, a path 4095)`,
        field,
      );
    }
    if (code === "EACCES" || code === "EPERM") {
      return new EngineError(
        "failed-precondition",
        REASON.BACKUP_DIR_NOT_WRITABLE,
        `${field}: the directory of ${quote(backupFile)} is not accessible (${code})`,
        field,
      );
    }
    return new EngineError(
      "internal",
      REASON.INTERNAL,
      `${field}: cannot check ${quote(backupFile)}: ${(error as Error).message}`,
      field,
    );
  }
}
