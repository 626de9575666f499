// Archives the service writes, checked with Proxmox's own `vma` (not in this
// repository: see docs/vma-format.md §13) the way Proxmox restores: `vma verify -v`
// and `vma extract -v -r FIFO` into preallocated targets. Skipped when the
// binary is not there (PROXMOX_VMA, or /var/cache/proxmox-vma/vma).
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { constants, existsSync } from "node:fs";
import { open, readFile, truncate, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { backupSpec, MiB, useEngineSandbox, waitForEnd, writeSource } from "./engine-helpers.js";

const VMA = process.env.PROXMOX_VMA ?? "/var/cache/proxmox-vma/vma";
const ODD_SIZES = [1, 513, 4097, 65537, 131071, 3 * MiB + 1, 10 * MiB + 4095] as const;

interface VmaRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly output: string;
}

function runVma(args: readonly string[]): Promise<VmaRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(VMA, args, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, output }));
  });
}

/**
 * Restores like qmrestore: the targets exist at the archive's sizes, and
 * `vma extract -r FIFO` reads "format=raw:0:DEVNAME=PATH" lines, then "done".
 */
async function proxmoxRestore(
  archive: string,
  dir: string,
  devices: ReadonlyArray<{ name: string; size: number }>,
  verbose: boolean,
): Promise<{ run: VmaRun; targets: string[] }> {
  const targets = devices.map((device) => path.join(path.dirname(dir), `${path.basename(dir)}-${device.name}.raw`));
  for (const [index, device] of devices.entries()) {
    await writeFile(targets[index]!, "");
    await truncate(targets[index]!, device.size);
  }
  const fifo = `${dir}.fifo`;
  execFileSync("mkfifo", [fifo]);
  const map = devices.map((device, index) => `format=raw:0:${device.name}=${targets[index]}\n`).join("");
  const run = runVma(["extract", ...(verbose ? ["-v"] : []), "-r", fifo, archive, dir]);
  // Opening the FIFO waits for vma to open it; a vma that dies first never
  // does, so then a reader of ours lets the write finish (into the pipe).
  const fed = writeFile(fifo, `${map}done\n`).catch(() => undefined);
  const result = await run;
  if (result.code !== 0) {
    const unblock = await open(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    await fed;
    await unblock.close();
  }
  await fed;
  return { run: result, targets };
}

function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc(Math.ceil(data.length / 512) * 512 - data.length)]);
}

describe.skipIf(!existsSync(VMA))("Proxmox's vma on archives of odd-sized devices", () => {
  const fixture = useEngineSandbox();

  it("verifies and restores every device as the source padded with zeros to 512", async () => {
    const { sandbox, engine } = fixture;
    const sources = ODD_SIZES.map((size) => randomBytes(size));
    const devices = await Promise.all(
      sources.map(async (data, index) => ({
        name: `drive-scsi${index}`,
        source: { kind: "path" as const, path: await writeSource(sandbox, `d${index}.raw`, data) },
      })),
    );
    const end = await waitForEnd(engine, (await engine.start(backupSpec({ devices }))).uuid);
    expect(end.state).toBe("done");

    const verify = await runVma(["verify", "-v", end.backupFile]);
    expect(verify, verify.output).toMatchObject({ code: 0 });

    const restoreDir = path.join(sandbox.root, "restore");
    const sizes = sources.map((data, index) => ({ name: `drive-scsi${index}`, size: padded(data).length }));
    const { run, targets } = await proxmoxRestore(end.backupFile, restoreDir, sizes, true);
    expect(run, run.output).toMatchObject({ code: 0 });
    for (const [index, target] of targets.entries()) {
      expect((await readFile(target)).equals(padded(sources[index]!)), target).toBe(true);
    }
  });

  it(
    "restores an archive of one tiny device without -v (with -v vma divides by zero, as our verify " + "warns)",
    async () => {
      const { sandbox, engine } = fixture;
      const source = randomBytes(513);
      const device = {
        name: "drive-scsi0",
        source: { kind: "path" as const, path: await writeSource(sandbox, "tiny.raw", source) },
      };
      const end = await waitForEnd(engine, (await engine.start(backupSpec({ devices: [device] }))).uuid);
      expect(end.state).toBe("done");

      expect(await runVma(["verify", end.backupFile])).toMatchObject({ code: 0 });
      expect(await runVma(["verify", "-v", end.backupFile])).toMatchObject({ signal: "SIGFPE" });
      const restoreDir = path.join(sandbox.root, "restore-tiny");
      const { run, targets } = await proxmoxRestore(
        end.backupFile,
        restoreDir,
        [{ name: "drive-scsi0", size: 1024 }],
        false,
      );
      expect(run, run.output).toMatchObject({ code: 0 });
      expect((await readFile(targets[0]!)).equals(padded(source))).toBe(true);
    },
  );
});
