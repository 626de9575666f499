// What `qemu-img info` says about one layer of an image, read through a
// descriptor we opened (never by path, so nothing can be swapped in between
// our confinement check and QEMU's open). Only the facts that decide how the
// chain is opened are kept.
import { spawn } from "node:child_process";
import type { FileHandle } from "node:fs/promises";
import type { ImageFormat } from "./image-format.js";

export interface ImageInfo {
  readonly virtualSize: number;
  /** The backing file as written in the header, if any. */
  readonly backingFilename?: string;
  /** The backing file's format as written in the header, if any. */
  readonly backingFormat?: string;
  /** A qcow2 external data file, if any (not supported). */
  readonly dataFile?: string;
  /** Files of a vmdk's extents, as QEMU named them. */
  readonly extentFiles: readonly string[];
}

/** `qemu-img info` failed: its own message (e.g. "Image is not in qcow2 format"). */
export class ImageInfoError extends Error {
  override readonly name = "ImageInfoError";
}

/** The fd number the layer gets in qemu-img (the first after stdio). */
const CHILD_FD = 3;
const INFO_TIMEOUT_MS = 30_000;

interface RawInfo {
  "virtual-size"?: unknown;
  "backing-filename"?: unknown;
  "backing-filename-format"?: unknown;
  "format-specific"?: { data?: { "data-file"?: unknown; extents?: { filename?: unknown }[] } };
}

function parseInfo(text: string): ImageInfo {
  const raw = JSON.parse(text) as RawInfo;
  const virtualSize = raw["virtual-size"];
  if (typeof virtualSize !== "number" || !Number.isSafeInteger(virtualSize) || virtualSize < 0) {
    throw new ImageInfoError(`qemu-img info reported no usable virtual size (${String(virtualSize)})`);
  }
  const data = raw["format-specific"]?.data;
  const text_ = (value: unknown): string | undefined => (typeof value === "string" ? value : undefined);
  const backingFilename = text_(raw["backing-filename"]);
  const backingFormat = text_(raw["backing-filename-format"]);
  const dataFile = text_(data?.["data-file"]);
  return {
    virtualSize,
    ...(backingFilename === undefined ? {} : { backingFilename }),
    ...(backingFormat === undefined ? {} : { backingFormat }),
    ...(dataFile === undefined ? {} : { dataFile }),
    extentFiles: (data?.extents ?? []).map((extent) => String(extent.filename ?? "")),
  };
}

/** Runs `qemu-img info -f FORMAT` on the open layer. Rejects with ImageInfoError. */
export async function readImageInfo(handle: FileHandle, format: ImageFormat): Promise<ImageInfo> {
  const args = ["info", "--output=json", "-f", format, `/proc/self/fd/${CHILD_FD}`];
  const { code, stdout, stderr, spawnError } = await runWithFd("qemu-img", args, handle.fd);
  if (spawnError !== undefined) {
    const missing = (spawnError as NodeJS.ErrnoException).code === "ENOENT";
    throw new ImageInfoError(missing ? "qemu-img is not installed" : spawnError.message, { cause: spawnError });
  }
  if (code === null) throw new ImageInfoError(`qemu-img info did not finish within ${INFO_TIMEOUT_MS / 1000} s`);
  if (code !== 0) {
    const said = stderr
      .trim()
      .replace(/^qemu-img: /, "")
      .replace(/^Could not open '[^']*': /, "");
    throw new ImageInfoError(said || `qemu-img info exited with ${code}`);
  }
  try {
    return parseInfo(stdout);
  } catch (error) {
    if (error instanceof ImageInfoError) throw error;
    throw new ImageInfoError(`qemu-img info printed something unexpected: ${(error as Error).message}`);
  }
}

interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly spawnError?: Error;
}

/** Runs a command with `fd` as its descriptor 3; collects its output. */
function runWithFd(command: string, args: readonly string[], fd: number): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      stdio: ["ignore", "pipe", "pipe", fd],
      timeout: INFO_TIMEOUT_MS,
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (text: string) => {
      stdout += text;
    });
    child.stderr?.setEncoding("utf8").on("data", (text: string) => {
      stderr += text;
    });
    child.on("error", (spawnError) => resolve({ code: null, stdout, stderr, spawnError }));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
