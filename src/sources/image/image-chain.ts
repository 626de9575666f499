// The files an image is made of: the image itself and its backing files,
// each opened by us through the same confinement as any source, so that
// QEMU reads exactly these descriptors and follows no name from a header.
// Features that would make QEMU open files by name (external data files,
// split vmdk extents, protocol or json: backing names) are refused.
import type { FileHandle } from "node:fs/promises";
import * as path from "node:path";
import { SourceRefusal } from "../source-refusal.js";
import { type ImageFormat, isImageFormat } from "./image-format.js";
import { type ImageInfo, ImageInfoError, readImageInfo } from "./image-info.js";

/** A layer file, opened read-only and checked to be inside a source root. */
export interface LayerFile {
  readonly handle: FileHandle;
  /** Real path of the opened file. */
  readonly realPath: string;
}

export interface ImageLayer extends LayerFile {
  readonly format: ImageFormat;
  /** Whether QEMU's driver for `format` takes a `backing` option. */
  readonly takesBacking: boolean;
}

/** Top image first, then its backing files in order. */
export interface ImageChain {
  readonly layers: readonly ImageLayer[];
  readonly virtualSize: number;
}

/** Opens a backing file by path with the same checks as a source; throws SourceRefusal. */
export type OpenBackingFile = (requestedPath: string, field: string) => Promise<LayerFile>;

/** QEMU refuses deeper chains too; a loop would never end. */
export const MAX_CHAIN_LENGTH = 16;

const FORMATS_WITH_BACKING: ReadonlySet<ImageFormat> = new Set(["qcow2", "qed", "vmdk"]);

/** "nbd:...", "json:{...}", "https://...": names QEMU would open through a protocol. */
const PROTOCOL_PREFIX = /^[A-Za-z][A-Za-z0-9+.-]*:/;

function refuse(code: SourceRefusal["code"], reason: string, message: string, field: string): SourceRefusal {
  return new SourceRefusal(code, reason, message, field);
}

function describeInfoFailure(error: unknown, layer: LayerFile, format: ImageFormat, field: string, isTop: boolean) {
  const said = error instanceof ImageInfoError ? error.message : String(error);
  if (/lock/i.test(said)) {
    return refuse(
      "failed-precondition",
      "IMAGE_IN_USE",
      `${field}: ${layer.realPath} is locked by a program writing to it (${said}); back up a running VM's disk as a qemu source`,
      field,
    );
  }
  if (isTop) {
    return refuse(
      "invalid-argument",
      "IMAGE_FORMAT_MISMATCH",
      `${field}: ${layer.realPath} cannot be opened as ${format}: ${said}`,
      field,
    );
  }
  return refuse(
    "failed-precondition",
    "IMAGE_BACKING_INVALID",
    `${field}: backing file ${layer.realPath} cannot be opened as ${format}: ${said}`,
    field,
  );
}

/** Refuses what would make QEMU open a file by name. */
function checkSelfContained(info: ImageInfo, layer: LayerFile, field: string): void {
  if (info.dataFile !== undefined) {
    throw refuse(
      "failed-precondition",
      "IMAGE_DATA_FILE_UNSUPPORTED",
      `${field}: ${layer.realPath} keeps its data in an external file (${info.dataFile}), which is not supported`,
      field,
    );
  }
  const foreign = info.extentFiles.find((file) => !file.startsWith("/proc/self/fd/"));
  if (foreign !== undefined) {
    throw refuse(
      "failed-precondition",
      "IMAGE_EXTENTS_UNSUPPORTED",
      `${field}: ${layer.realPath} is a vmdk split into extent files (${foreign}); convert it to a single-file vmdk or qcow2`,
      field,
    );
  }
}

/** The backing layer's path and format, checked; undefined when there is none. */
function backingOf(
  info: ImageInfo,
  layer: LayerFile,
  field: string,
): { path: string; format: ImageFormat } | undefined {
  const name = info.backingFilename;
  if (name === undefined || name === "") return undefined;
  if (PROTOCOL_PREFIX.test(name)) {
    throw refuse(
      "failed-precondition",
      "IMAGE_BACKING_UNSUPPORTED",
      `${field}: ${layer.realPath} has the backing file "${name}", which is not a plain file name`,
      field,
    );
  }
  const format = info.backingFormat;
  if (format === undefined || format === "") {
    throw refuse(
      "failed-precondition",
      "IMAGE_BACKING_FORMAT_UNKNOWN",
      `${field}: ${layer.realPath} does not record the format of its backing file "${name}" (formats are never probed); record it with qemu-img rebase -u -F FORMAT -b "${name}"`,
      field,
    );
  }
  if (!isImageFormat(format)) {
    throw refuse(
      "failed-precondition",
      "IMAGE_BACKING_UNSUPPORTED",
      `${field}: the backing file "${name}" of ${layer.realPath} is in format ${format}, which is not supported`,
      field,
    );
  }
  return { path: path.resolve(path.dirname(layer.realPath), name), format };
}

/**
 * Follows the backing chain of `top`, opened as `format`. On success the
 * chain owns every handle, `top`'s included; on failure the backing files
 * opened here are closed again and `top` is left to the caller.
 */
export async function resolveImageChain(
  top: LayerFile,
  format: ImageFormat,
  field: string,
  openBacking: OpenBackingFile,
): Promise<ImageChain> {
  const layers: ImageLayer[] = [];
  const openedHere: LayerFile[] = [];
  const seen = new Set<string>();
  let layer = top;
  let layerFormat = format;
  let virtualSize = 0;
  try {
    for (;;) {
      if (seen.has(layer.realPath) || layers.length >= MAX_CHAIN_LENGTH) {
        throw refuse(
          "failed-precondition",
          "IMAGE_BACKING_LOOP",
          `${field}: the backing chain of ${top.realPath} loops or is longer than ${MAX_CHAIN_LENGTH} files (at ${layer.realPath})`,
          field,
        );
      }
      seen.add(layer.realPath);
      let info: ImageInfo;
      try {
        info = await readImageInfo(layer.handle, layerFormat);
      } catch (error) {
        throw describeInfoFailure(error, layer, layerFormat, field, layers.length === 0);
      }
      if (layers.length === 0) virtualSize = info.virtualSize;
      layers.push({ ...layer, format: layerFormat, takesBacking: FORMATS_WITH_BACKING.has(layerFormat) });
      checkSelfContained(info, layer, field);
      const backing = backingOf(info, layer, field);
      if (backing === undefined) return { layers, virtualSize };
      layer = await openBacking(backing.path, field);
      openedHere.push(layer);
      layerFormat = backing.format;
    }
  } catch (error) {
    await Promise.allSettled(openedHere.map((file) => file.handle.close()));
    throw error;
  }
}
