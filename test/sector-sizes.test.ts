// Device sizes that are not a multiple of 512 bytes (issue 8, item 2).
// Proxmox's `vma` cannot restore them exactly, so the service records the
// size rounded up to 512 and pads with zeros, as `vma create` does; the
// status says so (archive_size) and our `vma verify` warns about archives
// of other writers with such sizes or with only tiny devices.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VmaWriter } from "../src/vma/writer.js";
import { backupSpec, CLUSTER, MiB, parseVma, useEngineSandbox, waitForEnd, writeSource } from "./engine-helpers.js";
import { startTestServer, type TestServer } from "./helpers/test-server.js";

const REPO = resolve(import.meta.dirname, "..");
/** The sizes of the issue: below 512, last sector in a new 4 KiB block, and inside one. */
const ODD_SIZES = [1, 513, 4097, 65537, 131071, 3 * MiB + 1, 10 * MiB + 4095] as const;

function roundUp512(size: number): number {
  return Math.ceil(size / 512) * 512;
}

/** Random bytes, none zero, so that every block of the source is stored. */
function nonZero(size: number): Buffer {
  const data = randomBytes(size);
  for (let index = 0; index < size; index++) data[index]! |= 1;
  return data;
}

describe("a backup of devices whose size is not a multiple of 512", () => {
  const fixture = useEngineSandbox();

  it("records each size rounded up to 512 and pads the device with zeros", async () => {
    const { sandbox, engine } = fixture;
    const sources = ODD_SIZES.map((size) => nonZero(size));
    const devices = await Promise.all(
      sources.map(async (data, index) => ({
        name: `drive-scsi${index}`,
        source: { kind: "path" as const, path: await writeSource(sandbox, `d${index}.raw`, data) },
      })),
    );
    const started = await engine.start(backupSpec({ devices }));
    const end = await waitForEnd(engine, started.uuid);
    expect(end.state).toBe("done");
    // The status counts the source's bytes; the archive holds the padded disk.
    const total = ODD_SIZES.reduce((sum, size) => sum + size, 0);
    expect(end).toMatchObject({ totalBytes: total, transferredBytes: total });
    expect(end.devices.map((device) => device.size)).toEqual([...ODD_SIZES]);

    const archive = await parseVma(end.backupFile);
    expect(archive.devices.map((device) => device.size)).toEqual(ODD_SIZES.map(roundUp512));
    archive.devices.forEach((device, index) => {
      const source = sources[index]!;
      const padded = Buffer.concat([source, Buffer.alloc(roundUp512(source.length) - source.length)]);
      expect(device.data.equals(padded), device.name).toBe(true);
    });
  });
});

describe("the status of such a backup over the API", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer();
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("reports archive_size beside size, and the status command says the disk was padded", async () => {
    const odd = await server.writeSource("odd.raw", nonZero(513));
    const even = await server.writeSource("even.raw", nonZero(CLUSTER));
    const response = await server.client.backup({
      backupFile: "odd.vma",
      devices: [
        { name: "drive-scsi0", path: odd },
        { name: "drive-scsi1", path: even },
      ],
    });
    const uuid = response.status!.uuid;
    expect(response.status!.devices.map((device) => [device.size, device.archiveSize])).toEqual([
      [513n, 1024n],
      [BigInt(CLUSTER), BigInt(CLUSTER)],
    ]);
    for await (const update of server.client.watchBackup({ uuid })) void update;

    const status = await cli(["status", uuid, "--server", server.address]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(
      / drive-scsi0 .*padded with 511 zero bytes to 1024 bytes {2}from path \/.*\/odd\.raw$/m,
    );
    expect(status.stdout).not.toMatch(/drive-scsi1 .*padded/);
  });
});

describe("vma verify of archives other writers made", () => {
  let root: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "vmabackup-sector-sizes-"));
  });

  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("warns, without failing, about a size that is not a multiple of 512", async () => {
    const file = join(root, "odd.vma");
    await writeArchive(file, [
      { name: "drive-scsi0", size: 2 * CLUSTER + 513 },
      { name: "drive-scsi1", size: CLUSTER },
    ]);
    const result = await cli(["vma", "verify", file]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^OK /m);
    expect(result.stderr).toBe(
      "warning: drive-scsi0: size 131585 is not a multiple of 512; Proxmox's vma cannot restore such a device " +
        "exactly\n",
    );
    const json = JSON.parse((await cli(["vma", "verify", "--json", file])).stdout) as {
      ok: boolean;
      warnings: string[];
    };
    expect(json.ok).toBe(true);
    expect(json.warnings).toHaveLength(1);
  });

  it("warns when every device is smaller than 64 KiB", async () => {
    const file = join(root, "tiny.vma");
    await writeArchive(file, [
      { name: "drive-scsi0", size: 4096 },
      { name: "drive-scsi1", size: CLUSTER - 512 },
    ]);
    const result = await cli(["vma", "verify", file]);
    expect(result.code).toBe(0);
    expect(result.stderr).toBe(
      "warning: every device is smaller than 64 KiB; Proxmox's vma verify -v and vma extract -v crash on such an " +
        "archive (division by zero), run them without -v\n",
    );
  });

  it("has nothing to warn about when one device has 64 KiB", async () => {
    const file = join(root, "fine.vma");
    await writeArchive(file, [
      { name: "drive-scsi0", size: 512 },
      { name: "drive-scsi1", size: CLUSTER },
    ]);
    const result = await cli(["vma", "verify", file]);
    expect(result).toMatchObject({ code: 0, stderr: "" });
  });
});

/** An archive of all-zero devices of the given sizes, written by our writer as another tool might. */
async function writeArchive(file: string, devices: ReadonlyArray<{ name: string; size: number }>): Promise<void> {
  const chunks: Uint8Array[] = [];
  const writer = new VmaWriter(
    { write: async (parts) => void chunks.push(...parts.map((part) => Uint8Array.from(part))) },
    { uuid: randomBytes(16) },
  );
  const devIds = devices.map((device) => writer.addDevice(device.name, device.size));
  for (const [index, device] of devices.entries()) {
    const devId = devIds[index]!;
    for (let cluster = 0; cluster * CLUSTER < device.size; cluster++)
      await writer.writeCluster(devId, cluster, Buffer.alloc(CLUSTER), 0);
    writer.completeDevice(devId);
  }
  await writer.finish();
  await writeFile(file, Buffer.concat(chunks));
}

interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** `vmabackup ARGS` as a child process. */
function cli(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const env = { ...process.env };
    delete env.VMABACKUP_SERVER;
    const child = spawn(process.execPath, ["bin/vmabackup.js", ...args], {
      cwd: REPO,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolvePromise({ code, stdout, stderr }));
  });
}
