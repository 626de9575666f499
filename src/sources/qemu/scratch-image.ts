// Creates the scratch overlay file with qemu-img. The file holds no backing
// reference: the live node becomes its backing when QEMU attaches it
// (blockdev-add ... backing: NODE), so qemu-img never opens the live disk,
// which may be locked by QEMU or not be a file at all.

import { execFile } from "node:child_process";
import { QemuSourceError } from "./errors.js";

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
