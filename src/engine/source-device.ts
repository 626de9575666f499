// Opens a source device and checks the file actually opened, so that no
// symlink swapped in between a check and the open can redirect the read:
// the type and size come from fstat on the descriptor and confinement from
// the descriptor's real path in /proc/self/fd. The descriptor is then the
// one the job reads from.
import { constants } from "node:fs";
import * as fs from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { EngineError } from "./errors.js";
import type { PathPolicy } from "./path-policy.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import type { DeviceSpec } from "./types.js";
import { errnoOf } from "./errno.js";

/** A source opened and checked, ready to be read. */
export interface SourceDevice {
  readonly name: string;
  /** Real path of the opened file. */
  readonly path: string;
  readonly handle: FileHandle;
  readonly size: number;
  readonly kind: "file" | "block-device";
  /**
   * What two jobs must not read at once: st_dev:st_ino for a file (so that
   * hard links and symlinks collide), the device number for a block device
   * (so that two device nodes of one disk collide).
   */
  readonly lockKey: string;
}

// O_NONBLOCK: opening a FIFO for reading must not wait for a writer (it is
// refused after fstat). O_NOCTTY: a terminal given as a source must never
// become our controlling terminal.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;
const SECTOR_SIZE = 512;

/** Maps an fs error on a source path to the refusal the client gets. */
function sourceError(error: unknown, device: DeviceSpec, field: string): EngineError {
  const code = errnoOf(error);
  const shown = quote(device.path);
  switch (code) {
    case "ENOENT":
    case "ENOTDIR":
      return new EngineError("not-found", REASON.SOURCE_NOT_FOUND, `${field}: ${shown} does not exist`, field);
    case "EACCES":
    case "EPERM":
      return new EngineError(
        "failed-precondition",
        REASON.SOURCE_UNREADABLE,
        `${field}: ${shown} is not readable (${code})`,
        field,
      );
    case "ENAMETOOLONG":
      return new EngineError(
        "invalid-argument",
        REASON.SOURCE_PATH_TOO_LONG,
        `${field}: ${shown} is too long (a file name holds at most 255 bytes, a path 4095)`,
        field,
      );
    case "ENXIO": // a Unix socket, or a device without a driver
    case "ENODEV":
    case "EOPNOTSUPP":
      return unsupported(device, field, `cannot be opened for reading (${code})`);
    default:
      return new EngineError(
        "failed-precondition",
        REASON.SOURCE_OPEN_FAILED,
        `${field}: ${shown} cannot be opened: ${code ?? (error as Error).message}`,
        field,
      );
  }
}

function unsupported(device: DeviceSpec, field: string, what: string): EngineError {
  return new EngineError(
    "failed-precondition",
    REASON.SOURCE_TYPE_UNSUPPORTED,
    `${field}: ${quote(device.path)} ${what}; a source must be a regular file or a block device`,
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

/** Everything about an open descriptor that decides whether it may be read. */
async function inspect(
  handle: FileHandle,
  device: DeviceSpec,
  field: string,
  policy: PathPolicy,
): Promise<Omit<SourceDevice, "handle" | "name">> {
  // Confinement first: nothing about a file outside the roots is revealed.
  const realPath = await fs.readlink(`/proc/self/fd/${handle.fd}`);
  if (!policy.isSourceAllowed(realPath)) throw policy.sourceNotAllowed(device.path, field);

  const stats = await handle.stat({ bigint: true });
  let kind: SourceDevice["kind"];
  let size: number;
  let lockKey: string;
  if (stats.isFile()) {
    kind = "file";
    size = Number(stats.size);
    lockKey = `file:${stats.dev}:${stats.ino}`;
  } else if (stats.isBlockDevice()) {
    kind = "block-device";
    size = await blockDeviceSize(stats.rdev);
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
    throw unsupported(device, field, what);
  }
  if (size === 0) {
    const message = `${field}: ${quote(device.path)} is empty`;
    throw new EngineError("failed-precondition", REASON.SOURCE_EMPTY, message, field);
  }
  return { path: realPath, size, kind, lockKey };
}

/**
 * Opens the source of `devices[index]` and checks it: inside a source root
 * (after resolving symlinks and `..`), a regular file or block device, not
 * empty. Throws EngineError; nothing stays open on failure.
 */
export async function openSource(policy: PathPolicy, device: DeviceSpec, index: number): Promise<SourceDevice> {
  const field = `devices[${index}].path`;
  const requested = policy.requestedSourcePath(device.path, field);

  // Resolving before the open keeps us from even opening (and so waking) a
  // device outside the roots in the common case; the check on the opened
  // descriptor below is the one that counts.
  let resolved: string;
  try {
    resolved = await fs.realpath(requested);
  } catch (error) {
    // "Does not exist" must not be answered for a place outside the roots.
    if (await policy.leadsOutsideSourceRoots(requested)) throw policy.sourceNotAllowed(device.path, field);
    throw sourceError(error, device, field);
  }
  if (!policy.isSourceAllowed(resolved)) throw policy.sourceNotAllowed(device.path, field);

  let handle: FileHandle;
  try {
    handle = await fs.open(resolved, OPEN_FLAGS);
  } catch (error) {
    throw sourceError(error, device, field);
  }
  try {
    const checked = await inspect(handle, device, field, policy);
    return { name: device.name, handle, ...checked };
  } catch (error) {
    await handle.close().catch(() => undefined);
    if (error instanceof EngineError) throw error;
    throw sourceError(error, device, field);
  }
}

/** Closes every source; never throws (a close error cannot lose data of a reader). */
export async function closeSources(sources: readonly SourceDevice[]): Promise<void> {
  await Promise.allSettled(sources.map((source) => source.handle.close()));
}
