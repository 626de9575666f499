// A raw file or block device as a DiskSource. Opens the path and checks the
// file actually opened, so that no symlink swapped in between a check and
// the open can redirect the read: the type and size come from fstat on the
// descriptor and confinement from the descriptor's real path in
// /proc/self/fd. The descriptor is then the one the job reads from.
import { constants } from "node:fs";
import * as fs from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import type { DiskSource } from "../disk-source.js";
import { quote } from "../quote.js";
import type { SourceConfinement } from "../source-confinement.js";
import { SourceEndedError, SourceReadError } from "../source-read-errors.js";
import { SOURCE_REASON, SourceRefusal } from "../source-refusal.js";

// O_NONBLOCK: opening a FIFO for reading must not wait for a writer (it is
// refused after fstat). O_NOCTTY: a terminal given as a source must never
// become our controlling terminal.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;
const SECTOR_SIZE = 512;

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/** The refusal of a path outside every source root. */
export function sourceNotAllowed(devicePath: string, field: string): SourceRefusal {
  return new SourceRefusal(
    "permission-denied",
    SOURCE_REASON.PATH_NOT_ALLOWED,
    `${field}: ${quote(devicePath)} is outside the allowed source directories`,
    field,
  );
}

/** Maps an fs error on a source path to the refusal the client gets. */
function sourceError(error: unknown, devicePath: string, field: string): SourceRefusal {
  const code = errnoOf(error);
  const shown = quote(devicePath);
  switch (code) {
    case "ENOENT":
    case "ENOTDIR":
      return new SourceRefusal("not-found", SOURCE_REASON.SOURCE_NOT_FOUND, `${field}: ${shown} does not exist`, field);
    case "EACCES":
    case "EPERM":
      return new SourceRefusal(
        "failed-precondition",
        SOURCE_REASON.SOURCE_UNREADABLE,
        `${field}: ${shown} is not readable (${code})`,
        field,
      );
    case "ENAMETOOLONG":
      return new SourceRefusal(
        "invalid-argument",
        SOURCE_REASON.SOURCE_PATH_TOO_LONG,
        `${field}: ${shown} is too long (a file name holds at most 255 bytes, a path 4095)`,
        field,
      );
    case "ENXIO": // a Unix socket, or a device without a driver
    case "ENODEV":
    case "EOPNOTSUPP":
      return unsupported(devicePath, field, `cannot be opened for reading (${code})`);
    default:
      return new SourceRefusal(
        "failed-precondition",
        SOURCE_REASON.SOURCE_OPEN_FAILED,
        `${field}: ${shown} cannot be opened: ${code ?? (error as Error).message}`,
        field,
      );
  }
}

function unsupported(devicePath: string, field: string, what: string): SourceRefusal {
  return new SourceRefusal(
    "failed-precondition",
    SOURCE_REASON.SOURCE_TYPE_UNSUPPORTED,
    `${field}: ${quote(devicePath)} ${what}; a source must be a regular file or a block device`,
    field,
  );
}

/** Linux dev_t layout (glibc's gnu_dev_major / gnu_dev_minor). */
function majorMinor(rdev: bigint): string {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** A block device's size in bytes, from sysfs (Node has no BLKGETSIZE64 ioctl). */
export async function blockDeviceSize(rdev: bigint): Promise<number> {
  const text = await fs.readFile(`/sys/dev/block/${majorMinor(rdev)}/size`, "utf8");
  const sectors = Number.parseInt(text.trim(), 10);
  if (!Number.isSafeInteger(sectors) || sectors < 0) {
    throw new Error(`unexpected sysfs size "${text.trim()}" for block device ${majorMinor(rdev)}`);
  }
  return sectors * SECTOR_SIZE;
}

interface Inspected {
  readonly kind: "file" | "block-device";
  readonly location: string;
  readonly size: number;
  readonly lockKey: string;
}

/** Everything about an open descriptor that decides whether it may be read. */
async function inspect(
  handle: FileHandle,
  devicePath: string,
  field: string,
  confinement: SourceConfinement,
): Promise<Inspected> {
  // Confinement first: nothing about a file outside the roots is revealed.
  const realPath = await fs.readlink(`/proc/self/fd/${handle.fd}`);
  if (!confinement.isSourceAllowed(realPath)) throw sourceNotAllowed(devicePath, field);

  const stats = await handle.stat({ bigint: true });
  let kind: Inspected["kind"];
  let size: number;
  let lockKey: string;
  if (stats.isFile()) {
    kind = "file";
    size = Number(stats.size);
    // st_dev:st_ino, so that hard links and symlinks collide.
    lockKey = `file:${stats.dev}:${stats.ino}`;
  } else if (stats.isBlockDevice()) {
    kind = "block-device";
    size = await blockDeviceSize(stats.rdev);
    // The device number, so that two device nodes of one disk collide.
    lockKey = `block:${stats.rdev}`;
  } else {
    const what = stats.isDirectory()
      ? "is a directory"
      : stats.isFIFO()
        ? "is a FIFO"
        : stats.isCharacterDevice()
          ? "is a character device"
          : stats.isSocket()
            ? "is a socket"
            : "is not a regular file";
    throw unsupported(devicePath, field, what);
  }
  if (size === 0) {
    throw new SourceRefusal(
      "failed-precondition",
      SOURCE_REASON.SOURCE_EMPTY,
      `${field}: ${quote(devicePath)} is empty`,
      field,
    );
  }
  return { kind, location: realPath, size, lockKey };
}

/** An opened, checked file or block device; reads go to its descriptor. */
class FileSource implements DiskSource {
  readonly kind: "file" | "block-device";
  readonly size: number;
  readonly lockKey: string;
  readonly location: string;
  private readonly handle: FileHandle;
  private closing: Promise<void> | undefined;

  constructor(handle: FileHandle, inspected: Inspected) {
    this.handle = handle;
    this.kind = inspected.kind;
    this.size = inspected.size;
    this.lockKey = inspected.lockKey;
    this.location = inspected.location;
  }

  async read(buffer: Uint8Array, bufferOffset: number, length: number, position: number): Promise<void> {
    let filled = 0;
    while (filled < length) {
      const at = position + filled;
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.handle.read(buffer, bufferOffset + filled, length - filled, at));
      } catch (error) {
        throw new SourceReadError(at, error);
      }
      if (bytesRead === 0) throw new SourceEndedError(at, this.size);
      filled += bytesRead;
    }
  }

  close(): Promise<void> {
    this.closing ??= this.handle.close().catch(() => undefined);
    return this.closing;
  }
}

/**
 * Opens `devicePath` and checks it: inside a source root (after resolving
 * symlinks and `..`), a regular file or block device, not empty. Throws
 * SourceRefusal naming `field`; nothing stays open on failure.
 */
export async function openFileSource(
  confinement: SourceConfinement,
  devicePath: string,
  field: string,
): Promise<DiskSource> {
  const requested = confinement.requestedSource(devicePath);
  if (requested === undefined) throw sourceNotAllowed(devicePath, field);

  // Resolving before the open keeps us from even opening (and so waking) a
  // device outside the roots in the common case; the check on the opened
  // descriptor below is the one that counts.
  let resolved: string;
  try {
    resolved = await fs.realpath(requested);
  } catch (error) {
    // "Does not exist" must not be answered for a place outside the roots.
    if (await confinement.leadsOutsideSourceRoots(requested)) throw sourceNotAllowed(devicePath, field);
    throw sourceError(error, devicePath, field);
  }
  if (!confinement.isSourceAllowed(resolved)) throw sourceNotAllowed(devicePath, field);

  let handle: FileHandle;
  try {
    handle = await fs.open(resolved, OPEN_FLAGS);
  } catch (error) {
    throw sourceError(error, devicePath, field);
  }
  try {
    return new FileSource(handle, await inspect(handle, devicePath, field, confinement));
  } catch (error) {
    await handle.close().catch(() => undefined);
    if (error instanceof SourceRefusal) throw error;
    throw sourceError(error, devicePath, field);
  }
}
