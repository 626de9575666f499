// Extracts an archive into a directory: `disk-<name>.raw` per chosen device
// (`vmstate.bin` for the VM state, as Proxmox names it) at exactly its size,
// and every config as `<name>`, except a config named like the image file of
// any device in the archive: the image wins (as with Proxmox's extract,
// whose rename replaces such a config), the config is left out with a
// warning and stays readable with `vma config`. Files are created
// exclusively, never overwritten. The archive is judged exactly as `verify`
// judges it; when it turns out invalid (or a chosen device is incomplete
// without allowIncomplete), the files this run created are removed again, so
// a restore never leaves a plausible-looking but wrong image behind.
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ChunkHolds } from "./chunk-holds.js";
import { DiskImageWriter } from "./extract-disk-image.js";
import { ExtentData } from "./reader-extent-data.js";
import type { VmaDevice, VmaExtent, VmaHeader } from "./reader-types.js";
import { verifyArchive, type ArchiveVerdict } from "./verify-archive.js";

export interface ExtractOptions {
  /** Created when missing; existing files in it are never overwritten. */
  readonly dir: string;
  /** Names of the devices to extract; all when absent or empty. */
  readonly devices?: readonly string[];
  /** Leave zero blocks as holes instead of writing them. */
  readonly sparse: boolean;
  /** Extract even when chosen devices miss clusters (they read as zeros). */
  readonly allowIncomplete: boolean;
}

export interface ExtractResult extends ArchiveVerdict {
  /** Files written (empty when the extraction failed and was cleaned up). */
  readonly files: readonly string[];
}

/** The request does not fit the archive (e.g. an unknown device name). */
export class ExtractUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExtractUsageError";
  }
}

/** File name of a device's image in the extract directory. */
export function imageFileName(device: VmaDevice): string {
  return device.isVmstate ? "vmstate.bin" : `disk-${device.name}.raw`;
}

export async function extractArchive(
  chunks: AsyncIterable<Uint8Array>,
  options: ExtractOptions,
): Promise<ExtractResult> {
  const holds = new ChunkHolds(chunks);
  const extraction = new Extraction(options, holds);
  try {
    const verdict = await verifyArchive(holds, {
      allowIncomplete: options.allowIncomplete,
      requireComplete: (devId) => extraction.isChosen(devId),
      onHeader: (header, problemsSoFar) => extraction.start(header, problemsSoFar),
      onExtent: (extent, problemsSoFar) => extraction.write(extent, problemsSoFar),
    });
    const files = await extraction.finish(verdict);
    return { ...verdict, warnings: [...verdict.warnings, ...extraction.warnings], files };
  } catch (error) {
    await extraction.discard();
    throw error;
  }
}

/**
 * Extents whose writes may be in flight while the next ones are read: enough
 * to keep the reads, the parsing and the writes busy at once, each holding
 * its input chunks (4 MiB each) until written.
 */
const EXTENTS_IN_FLIGHT = 2;

class Extraction {
  private readonly options: ExtractOptions;
  private readonly holds: ChunkHolds;
  /** Writes of extents not yet settled, oldest first; each resolves to its failure, if any. */
  private readonly inFlight: Promise<PromiseRejectedResult | undefined>[] = [];
  private readonly chosen = new Set<number>();
  private readonly writers = new Map<number, DiskImageWriter>();
  private readonly created: string[] = [];
  /** Configs left out because a device's image has their file name. */
  readonly warnings: string[] = [];
  /** False once a problem makes the result worthless: nothing more is written. */
  private writing = false;

  constructor(options: ExtractOptions, holds: ChunkHolds) {
    this.options = options;
    this.holds = holds;
  }

  isChosen(devId: number): boolean {
    return this.chosen.has(devId);
  }

  async start(header: VmaHeader, problemsSoFar: number): Promise<void> {
    const devices = this.chooseDevices(header);
    for (const device of devices) this.chosen.add(device.devId);
    // A header with problems (unsafe or duplicate names...) is not written out.
    if (problemsSoFar > 0) return;
    await mkdir(this.options.dir, { recursive: true });
    // Of every device, chosen or not, so that --device does not change which configs are written.
    const images = new Map([...header.devices.values()].map((device) => [imageFileName(device), device]));
    for (const config of header.configs) {
      const image = images.get(config.name);
      if (image !== undefined) {
        this.warnings.push(
          `config "${config.name}" not extracted: the image of device ${image.name} has that file name ` +
            `(print the config with: vma config ARCHIVE ${config.name})`,
        );
        continue;
      }
      const path = join(this.options.dir, config.name);
      await writeFile(path, config.data, { flag: "wx" });
      this.created.push(path);
    }
    for (const device of devices) {
      const writer = await DiskImageWriter.create(
        join(this.options.dir, imageFileName(device)),
        device,
        this.options.sparse,
      );
      this.created.push(writer.path);
      this.writers.set(device.devId, writer);
    }
    this.writing = true;
  }

  async write(extent: VmaExtent, problemsSoFar: number): Promise<void> {
    if (!this.writing) return;
    if (problemsSoFar > 0) {
      this.writing = false;
      return;
    }
    const data = new ExtentData(extent.data);
    for (const slot of extent.slots) this.writers.get(slot.devId)?.addSlot(slot, data);
    // The data are views of the reader's input chunks: held until written, so
    // that the reader goes on while they are (clusters never repeat in an
    // accepted extent, so writes in flight never overlap).
    const release = this.holds.hold(extent.data);
    const written = Promise.allSettled([...this.writers.values()].map((writer) => writer.flush())).then((flushes) => {
      release();
      return flushes.find((flush) => flush.status === "rejected");
    });
    this.inFlight.push(written);
    while (this.inFlight.length > EXTENTS_IN_FLIGHT) await this.settleOldest();
  }

  /** Completes the files when the verdict is good, else removes them; returns the files kept. */
  async finish(verdict: ArchiveVerdict): Promise<string[]> {
    while (this.inFlight.length > 0) await this.settleOldest();
    if (!verdict.ok || !this.writing) {
      await this.discard();
      return [];
    }
    if (!this.options.sparse) {
      for (const device of verdict.missing) await this.writers.get(device.devId)?.fillClusters(device.allRanges());
    }
    await this.closeAll();
    return [...this.created];
  }

  /** Closes and removes every file this extraction created. */
  async discard(): Promise<void> {
    await Promise.all(this.inFlight.splice(0));
    await this.closeAll();
    await Promise.all(this.created.map((path) => rm(path, { force: true })));
    this.created.length = 0;
  }

  /** Waits for the oldest extent's writes; throws their error. */
  private async settleOldest(): Promise<void> {
    const failure = await this.inFlight.shift();
    if (failure !== undefined) throw failure.reason;
  }

  private async closeAll(): Promise<void> {
    const writers = [...this.writers.values()];
    this.writers.clear();
    await Promise.allSettled(writers.map((writer) => writer.close()));
  }

  private chooseDevices(header: VmaHeader): VmaDevice[] {
    const all = [...header.devices.values()];
    const names = this.options.devices ?? [];
    if (names.length === 0) return all;
    const unknown = names.filter((name) => !all.some((device) => device.name === name));
    if (unknown.length > 0) {
      const known = all.map((device) => device.name).join(", ") || "none";
      throw new ExtractUsageError(`no device named ${unknown.join(", ")} in the archive; its devices: ${known}`);
    }
    return all.filter((device) => names.includes(device.name));
  }
}
