// Read buffers are reused for the whole job, while the VMA writer hands
// cluster bytes to the file by reference. A buffer reused before the extent
// writes that reference it completed would put later data into the archive:
// a backup with distinct bytes in every block, through a target whose
// writes complete slowly, must come back byte-identical.
import { describe, expect, it } from "vitest";
import type { BackupDriver } from "../src/drivers/driver.js";
import { vmaDriver } from "../src/drivers/vma-driver.js";
import type { ArchiveUpload } from "../src/stores/archive-store.js";
import {
  backupSpec,
  KiB,
  makeEngine,
  MiB,
  ownStateDir,
  parseVma,
  sleep,
  useEngineSandbox,
  waitForEnd,
  writeSource,
} from "./engine-helpers.js";
import * as path from "node:path";

const fixture = useEngineSandbox();

/** Every 8 bytes hold their own device offset and a device tag: no two blocks alike, none zero. */
function counterPattern(size: number, tag: number): Buffer {
  const data = Buffer.alloc(size);
  for (let offset = 0; offset + 8 <= size; offset += 8) {
    data.writeUInt32LE(offset, offset);
    data.writeUInt32LE(tag, offset + 4);
  }
  return data;
}

/** The VMA driver, with every archive write held back `delayMs` before it starts. */
function slowWriteDriver(delayMs: number): BackupDriver {
  return {
    format: vmaDriver.format,
    fileSuffix: vmaDriver.fileSuffix,
    checkPlan: (plan) => vmaDriver.checkPlan(plan),
    openUpload(upload, options) {
      const slow: ArchiveUpload = {
        pending: upload.pending,
        location: upload.location,
        get bytesWritten() {
          return upload.bytesWritten;
        },
        async write(chunks: readonly Uint8Array[]): Promise<void> {
          // The referenced bytes are only read by writev after the delay.
          await sleep(delayMs);
          await upload.write(chunks);
        },
        commit: () => upload.commit(),
        abort: () => upload.abort(),
      };
      return vmaDriver.openUpload(slow, options);
    },
  };
}

describe("read buffer reuse", () => {
  it("stores every cluster's own bytes when archive writes complete slowly", async () => {
    const { sandbox } = fixture;
    const { engine } = makeEngine(sandbox, { stateDir: ownStateDir(sandbox), drivers: [slowWriteDriver(15)] });
    // Many more chunks than pool buffers, a partial last chunk, and a second
    // device that reuses the first one's buffers.
    const dataA = counterPattern(37 * MiB + 12 * KiB, 0xa);
    const dataB = counterPattern(9 * MiB, 0xb);
    const pathA = await writeSource(sandbox, "a.raw", dataA);
    const pathB = await writeSource(sandbox, "b.raw", dataB);
    try {
      const status = await engine.start(
        backupSpec({
          backupFile: "reuse.vma",
          devices: [
            { name: "drive-scsi0", source: { kind: "path", path: pathA } },
            { name: "drive-scsi1", source: { kind: "path", path: pathB } },
          ],
        }),
      );
      const end = await waitForEnd(engine, status.uuid);
      expect(end.state).toBe("done");
      const parsed = await parseVma(path.join(sandbox.out, "reuse.vma"));
      const [a, b] = parsed.devices;
      // Compared as a boolean first: a diff of 37 MiB buffers is unreadable.
      expect(a?.data.subarray(0, dataA.length).equals(dataA)).toBe(true);
      expect(b?.data.subarray(0, dataB.length).equals(dataB)).toBe(true);
    } finally {
      await engine.shutdown();
    }
  }, 60_000);
});
