// The names one fleecing job gives its objects in QEMU and on disk. Every
// name carries the job's tag, so a daemon restarted after kill -9 finds its
// leftovers by prefix without having to know which steps had completed.

import { join } from "node:path";
import { QemuSourceError } from "./errors.js";

/** QEMU caps node names at 31 characters: keep tags short (e.g. the first 8 hex digits of the job uuid). */
const TAG_PATTERN = /^[A-Za-z0-9]{1,12}$/;
export const MAX_FLEECING_DRIVES = 64;

export interface FleecingNames {
  /** The qcow2 overlay node (backing: the live node). */
  readonly scratchNode: string;
  /** The blockdev-backup sync=none job that copies old data into the overlay. */
  readonly jobId: string;
  /** The block export id, also used as the NBD export name. */
  readonly exportId: string;
  readonly scratchFile: string;
}

export function validateTag(tag: string): void {
  if (!TAG_PATTERN.test(tag)) {
    throw new QemuSourceError(
      "INVALID_OPTIONS",
      `fleecing tag ${JSON.stringify(tag)} must be 1 to 12 letters or digits (QEMU node names are at most 31 characters)`,
    );
  }
}

/** Prefix shared by every QEMU object and scratch file of the job tagged `tag`. */
export function tagPrefix(tag: string): string {
  return `vmab-${tag}-`;
}

export function fleecingNames(tag: string, scratchDir: string, index: number): FleecingNames {
  const prefix = tagPrefix(tag);
  return {
    scratchNode: `${prefix}scratch${index}`,
    jobId: `${prefix}fleece${index}`,
    exportId: `${prefix}export${index}`,
    scratchFile: join(scratchDir, `${prefix}scratch${index}.qcow2`),
  };
}
