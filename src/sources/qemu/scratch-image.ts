// Creates the scratch overlay file with qemu-img. The file holds no backing
// reference: the live node becomes its backing when QEMU attaches it
// (blockdev-add ... backing: NODE), so qemu-img never opens the live disk,
// which may be locked by QEMU or not be a file at all.

import { execFile } from "node:child_process";
import { open } from "node:fs/promises";
import { errorMessage, QemuSourceError } from "./errors.js";

/**
 * Claims `path` exclusively (a file already there may be another job's
 * overlay in use by QEMU: never overwrite it), then formats it as qcow2.
 * Resolves once the file is ours; on a later failure the caller deletes it.
 */
export async function claimScratchFile(path: string, drive: string): Promise<void> {
  try {
    await (await open(path, "wx", 0o600)).close();
  } catch (error) {
    throw new QemuSourceError(
      "SCRATCH_CREATE_FAILED",
      `cannot create the scratch overlay ${path} for ${drive}: ${errorMessage(error)}`,
      {
        drive,
        cause: error,
      },
    );
  }
}

export function createScratchImage(path: string, size: number, timeoutMs: number, drive: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(
      "qemu-img",
      ["create", "-q", "-f", "qcow2", path, String(size)],
      { timeout: timeoutMs, killSignal: "SIGKILL" },
      (error, _stdout, stderr) => {
        if (error === null) {
          resolve();
          return;
        }
        const why = stderr.trim() || error.message;
        reject(
          new QemuSourceError(
            "SCRATCH_CREATE_FAILED",
            `cannot create the scratch overlay ${path} for ${drive}: ${why}`,
            {
              drive,
              cause: error,
            },
          ),
        );
      },
    );
  });
}
