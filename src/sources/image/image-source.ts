// A disk image as a DiskSource: its files opened and confined by us, served
// read-only by a private qemu-storage-daemon, read with our NBD client. What
// the job reads is the guest-visible disk, holes and zero clusters mapped
// by block status so that they are never read.
import * as fs from "node:fs/promises";
import type { DiskSource, SourceExtent } from "../disk-source.js";
import { type NbdSource, type NbdSourceOptions, openNbdSource } from "../nbd/index.js";
import { type ImageChain, type LayerFile, type OpenBackingFile, resolveImageChain } from "./image-chain.js";
import type { ImageFormat } from "./image-format.js";
import { type ImageExport, startImageExport } from "./storage-daemon.js";

export interface ImageSourceOptions {
  /** The image as the client named it. */
  readonly path: string;
  readonly format: ImageFormat;
  /** The request field of the image, e.g. "devices[0].image". */
  readonly field: string;
  /** Opens the image and each backing file with the confinement of any source; throws SourceRefusal. */
  readonly openFile: OpenBackingFile;
  /** A fresh private (0700) directory for the daemon's socket; removed on close. */
  readonly workDir: string;
  readonly nbd?: NbdSourceOptions;
}

class ImageSource implements DiskSource {
  readonly kind = "image" as const;
  readonly size: number;
  readonly lockKey: string;
  readonly location: string;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly chain: ImageChain,
    private readonly served: ImageExport,
    private readonly reader: NbdSource,
    lockKey: string,
  ) {
    this.size = reader.size;
    this.lockKey = lockKey;
    const top = chain.layers[0];
    this.location = top === undefined ? "" : `${top.realPath} (${top.format})`;
  }

  read(buffer: Uint8Array, bufferOffset: number, length: number, position: number): Promise<void> {
    return this.reader.read(buffer, bufferOffset, length, position);
  }

  mapExtents(offset: number, length: number): Promise<readonly SourceExtent[]> {
    return this.reader.mapExtents(offset, length);
  }

  close(): Promise<void> {
    this.closing ??= closeAll(this.chain, this.served, this.reader);
    return this.closing;
  }
}

async function closeAll(chain: ImageChain, served: ImageExport | undefined, reader: NbdSource | undefined) {
  await reader?.close();
  await served?.stop();
  await Promise.allSettled(chain.layers.map((layer) => layer.handle.close()));
}

/** st_dev:st_ino, as the file source keys files: a path and an image of one file collide. */
async function fileLockKey(top: LayerFile): Promise<string> {
  const stats = await top.handle.stat({ bigint: true });
  return `file:${stats.dev}:${stats.ino}`;
}

/**
 * Opens the image, checks its chain, starts its daemon and connects. Throws
 * SourceRefusal for what the client must fix, Error for the rest; nothing
 * stays open or running on failure.
 */
export async function openImageSource(options: ImageSourceOptions): Promise<DiskSource> {
  const top = await options.openFile(options.path, options.field);
  let chain: ImageChain;
  try {
    chain = await resolveImageChain(top, options.format, options.field, options.openFile);
  } catch (error) {
    await top.handle.close().catch(() => undefined);
    throw error;
  }
  let served: ImageExport | undefined;
  let reader: NbdSource | undefined;
  try {
    const lockKey = await fileLockKey(top);
    served = await startImageExport({ layers: chain.layers, workDir: options.workDir });
    const address = { transport: "unix", socketPath: served.socketPath, exportName: served.exportName } as const;
    reader = await openNbdSource(address, options.nbd);
    return new ImageSource(chain, served, reader, lockKey);
  } catch (error) {
    await closeAll(chain, served, reader);
    await fs.rm(options.workDir, { recursive: true, force: true }).catch(() => undefined);
    throw error;
  }
}
