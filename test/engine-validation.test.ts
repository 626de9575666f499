// Every refusal of BackupEngine.start (kind, reason, field), and that a
// refused request leaves nothing behind.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceSpec } from "../src/engine/types.js";
import { backupSpec, expectEngineError, KiB, useEngineSandbox, waitForEnd, writeSource } from "./engine-helpers.js";

const fixture = useEngineSandbox();
let disk: string;

beforeEach(async () => {
  disk = await writeSource(fixture.sandbox, "disk.raw", Buffer.alloc(64 * KiB, 1));
});

// Runs before the fixture removes the sandbox.
afterEach(async () => {
  const { sandbox, engine } = fixture;
  await engine.shutdown();
  // A refused request creates nothing: no archive, no partial file.
  expect(await fs.readdir(sandbox.out)).toEqual([]);
});

function devices(count: number): DeviceSpec[] {
  return Array.from({ length: count }, (_, index) => ({
    name: `drive-scsi${index}`,
    source: { kind: "path", path: disk },
  }));
}

function start(partial: Parameters<typeof backupSpec>[0]): () => Promise<unknown> {
  return () =>
    fixture.engine.start(
      backupSpec({ devices: [{ name: "drive-scsi0", source: { kind: "path", path: disk } }], ...partial }),
    );
}

describe("request shape", () => {
  it("refuses an empty device list", async () => {
    await expectEngineError(start({ devices: [] }), "invalid-argument", "NO_DEVICES", "devices");
  });

  it("refuses more than 254 devices", async () => {
    await expectEngineError(start({ devices: devices(255) }), "invalid-argument", "TOO_MANY_DEVICES", "devices");
  });

  it.each([
    ["empty", ""],
    ["a slash", "drive/scsi0"],
    ["a space", "drive scsi0"],
    ["a tab", "drive\tscsi0"],
    ["a newline", "drive\nscsi0"],
    ["unicode whitespace", "drive\u00a0scsi0"],
    ["NUL", "drive\0scsi0"],
    ["a lone surrogate", "drive\ud800"],
    // Restore tools that write a device to a file of its name cannot.
    ["only a dot", "."],
    ["only two dots", ".."],
  ])("refuses a device name with %s", async (_what, name) => {
    await expectEngineError(
      start({
        devices: [
          { name: "ok", source: { kind: "path", path: disk } },
          { name, source: { kind: "path", path: disk } },
        ],
      }),
      "invalid-argument",
      "DEVICE_NAME_INVALID",
      "devices[1].name",
    );
  });

  it("refuses the reserved name vmstate", async () => {
    await expectEngineError(
      start({ devices: [{ name: "vmstate", source: { kind: "path", path: disk } }] }),
      "invalid-argument",
      "DEVICE_NAME_RESERVED",
      "devices[0].name",
    );
  });

  it("counts the name limit in UTF-8 bytes, not characters", async () => {
    await expectEngineError(
      start({ devices: [{ name: "d".repeat(128), source: { kind: "path", path: disk } }] }),
      "invalid-argument",
      "DEVICE_NAME_TOO_LONG",
      "devices[0].name",
    );
    // 43 characters, 129 bytes.
    await expectEngineError(
      start({ devices: [{ name: "€".repeat(43), source: { kind: "path", path: disk } }] }),
      "invalid-argument",
      "DEVICE_NAME_TOO_LONG",
      "devices[0].name",
    );
  });

  it("accepts a name of exactly 127 bytes", async () => {
    const { engine } = fixture;
    const status = await start({ devices: [{ name: `${"€".repeat(42)}d`, source: { kind: "path", path: disk } }] })();
    const end = await waitForEnd(engine, (status as { uuid: string }).uuid);
    expect(end.state).toBe("done");
    await fs.rm(end.backupFile);
  });

  it("refuses duplicate device names", async () => {
    await expectEngineError(
      start({
        devices: [
          { name: "a", source: { kind: "path", path: disk } },
          { name: "a", source: { kind: "path", path: disk } },
        ],
      }),
      "invalid-argument",
      "DEVICE_NAME_DUPLICATE",
      "devices[1].name",
    );
  });

  it.each([
    ["empty", ""],
    ["NUL", "disk\0.raw"],
  ])("refuses a device path that is %s", async (_what, devicePath) => {
    await expectEngineError(
      start({ devices: [{ name: "a", source: { kind: "path", path: devicePath } }] }),
      "invalid-argument",
      "DEVICE_PATH_INVALID",
      "devices[0].path",
    );
  });

  it("refuses more than 256 configs", async () => {
    const configs = Array.from({ length: 257 }, (_, index) => ({ name: `c${index}`, data: Buffer.from("x") }));
    await expectEngineError(start({ configs }), "invalid-argument", "TOO_MANY_CONFIGS", "configs");
  });

  it.each([
    ["empty", ""],
    ["a slash", "etc/qemu.conf"],
    ["NUL", "qemu\0.conf"],
    [".", "."],
    ["..", ".."],
  ])("refuses a config name that is %s", async (_what, name) => {
    await expectEngineError(
      start({
        configs: [
          { name: "ok.conf", data: Buffer.from("x") },
          { name, data: Buffer.from("x") },
        ],
      }),
      "invalid-argument",
      "CONFIG_NAME_INVALID",
      "configs[1].name",
    );
  });

  it.each([
    ["Proxmox's and our extract name the device's image", "disk-drive-scsi0.raw"],
    ["Proxmox's extract writes the image to first", "tmp-disk-drive-scsi0.raw"],
    ["other extractors give the device's image", "drive-scsi0"],
  ])("refuses a config with the file name %s", async (_what, name) => {
    const error = await expectEngineError(
      start({
        configs: [
          { name: "qemu-server.conf", data: Buffer.from("x") },
          { name, data: Buffer.from("x") },
        ],
      }),
      "invalid-argument",
      "CONFIG_NAME_CONFLICT",
      "configs[1].name",
    );
    expect(error.message).toContain("devices[0].name");
  });

  it("refuses duplicate config names", async () => {
    const configs = [
      { name: "qemu-server.conf", data: Buffer.from("a") },
      { name: "qemu-server.conf", data: Buffer.from("b") },
    ];
    await expectEngineError(start({ configs }), "invalid-argument", "CONFIG_NAME_DUPLICATE", "configs[1].name");
  });

  it("refuses a config over 65535 bytes", async () => {
    const configs = [{ name: "big.conf", data: Buffer.alloc(65536) }];
    await expectEngineError(start({ configs }), "invalid-argument", "CONFIG_TOO_LARGE", "configs[0].data");
  });

  it("asks the driver whether the configs fit the archive header", async () => {
    // Each fits a blob, together they overflow the 512 KiB VMA header.
    const configs = Array.from({ length: 9 }, (_, index) => ({ name: `c${index}`, data: Buffer.alloc(65000) }));
    const error = await expectEngineError(start({ configs }), "invalid-argument", "ARCHIVE_LIMIT_EXCEEDED");
    expect(error.field).toMatch(/^configs/);
    expect(error.message.startsWith(`${error.field}: `)).toBe(true);
  });

  it("refuses an unknown format", async () => {
    await expectEngineError(start({ format: "tar" }), "invalid-argument", "FORMAT_UNSUPPORTED", "format");
  });

  it.each([
    ["empty", "", "BACKUP_FILE_INVALID"],
    ["NUL", "a\0.vma", "BACKUP_FILE_INVALID"],
    ["only the suffix", "sub/.vma", "BACKUP_FILE_INVALID"],
    ["of the wrong suffix", "backup.tar", "BACKUP_FILE_BAD_SUFFIX"],
    ["a directory", "backup.vma/", "BACKUP_FILE_BAD_SUFFIX"],
  ])("refuses a backup_file that is %s", async (_what, backupFile, reason) => {
    await expectEngineError(start({ backupFile }), "invalid-argument", reason, "backup_file");
  });

  it.each([[-1], [1.5], [Number.NaN], [Number.POSITIVE_INFINITY], [2 ** 64]])(
    "refuses speed_limit %s",
    async (speedLimit) => {
      await expectEngineError(start({ speedLimit }), "invalid-argument", "SPEED_LIMIT_INVALID", "speed_limit");
    },
  );
});

describe("sources", () => {
  it("reports a missing source as not found", async () => {
    const { sandbox } = fixture;
    await expectEngineError(
      start({ devices: [{ name: "a", source: { kind: "path", path: path.join(sandbox.src, "missing.raw") } }] }),
      "not-found",
      "SOURCE_NOT_FOUND",
      "devices[0].path",
    );
  });

  it("refuses a source path longer than the filesystem allows", async () => {
    const { sandbox } = fixture;
    await expectEngineError(
      start({ devices: [{ name: "a", source: { kind: "path", path: path.join(sandbox.src, "x".repeat(300)) } }] }),
      "invalid-argument",
      "SOURCE_PATH_TOO_LONG",
      "devices[0].path",
    );
  });

  it("refuses an empty source", async () => {
    const { sandbox } = fixture;
    const empty = await writeSource(sandbox, "empty.raw", Buffer.alloc(0));
    await expectEngineError(
      start({
        devices: [
          { name: "a", source: { kind: "path", path: disk } },
          { name: "b", source: { kind: "path", path: empty } },
        ],
      }),
      "failed-precondition",
      "SOURCE_EMPTY",
      "devices[1].path",
    );
  });

  it("refuses the same source given twice, even under another name", async () => {
    const { sandbox } = fixture;
    const link = path.join(sandbox.src, "hardlink.raw");
    await fs.link(disk, link);
    await expectEngineError(
      start({
        devices: [
          { name: "a", source: { kind: "path", path: disk } },
          { name: "b", source: { kind: "path", path: link } },
        ],
      }),
      "invalid-argument",
      "DEVICE_SOURCE_DUPLICATE",
      "devices[1].path",
    );
  });
});

describe("the archive", () => {
  it("refuses an existing backup_file", async () => {
    const { sandbox } = fixture;
    await fs.writeFile(path.join(sandbox.out, "taken.vma"), "x");
    await expectEngineError(start({ backupFile: "taken.vma" }), "already-exists", "BACKUP_FILE_EXISTS", "backup_file");
    await fs.rm(path.join(sandbox.out, "taken.vma"));
  });

  it("refuses a dangling symlink planted at the final name", async () => {
    const { sandbox } = fixture;
    const planted = path.join(sandbox.out, "planted.vma");
    await fs.symlink(path.join(sandbox.root, "elsewhere.vma"), planted);
    await expectEngineError(
      start({ backupFile: "planted.vma" }),
      "already-exists",
      "BACKUP_FILE_EXISTS",
      "backup_file",
    );
    await fs.rm(planted);
    await expect(fs.stat(path.join(sandbox.root, "elsewhere.vma"))).rejects.toThrow();
  });

  it("refuses when the partial file already exists, and leaves it alone", async () => {
    const { sandbox } = fixture;
    const partial = path.join(sandbox.out, "busy.vma.partial");
    await fs.writeFile(partial, "someone else's");
    await expectEngineError(start({ backupFile: "busy.vma" }), "already-exists", "BACKUP_FILE_EXISTS", "backup_file");
    expect(await fs.readFile(partial, "utf8")).toBe("someone else's");
    await fs.rm(partial);
  });

  it("refuses a backup_file name longer than the filesystem allows", async () => {
    await expectEngineError(
      start({ backupFile: `${"n".repeat(300)}.vma` }),
      "invalid-argument",
      "BACKUP_FILE_NAME_TOO_LONG",
      "backup_file",
    );
  });

  it("refuses a backup_file whose directory is missing", async () => {
    await expectEngineError(
      start({ backupFile: "no/such/dir/a.vma" }),
      "failed-precondition",
      "BACKUP_DIR_NOT_FOUND",
      "backup_file",
    );
  });

  it("refuses a backup_file under a regular file", async () => {
    const { sandbox } = fixture;
    await fs.writeFile(path.join(sandbox.out, "file"), "x");
    await expectEngineError(
      start({ backupFile: "file/a.vma" }),
      "failed-precondition",
      "BACKUP_DIR_NOT_FOUND",
      "backup_file",
    );
    await fs.rm(path.join(sandbox.out, "file"));
  });

  it("accepts an absolute backup_file inside the backup dir and a subdirectory", async () => {
    const { sandbox, engine } = fixture;
    await fs.mkdir(path.join(sandbox.out, "vm100"));
    const status = await engine.start(
      backupSpec({
        backupFile: path.join(sandbox.out, "vm100", "a.vma"),
        devices: [{ name: "a", source: { kind: "path", path: disk } }],
      }),
    );
    expect(status.backupFile).toBe(path.join(await fs.realpath(sandbox.out), "vm100", "a.vma"));
    expect((await waitForEnd(engine, status.uuid)).state).toBe("done");
    await fs.rm(path.join(sandbox.out, "vm100"), { recursive: true });
  });
});

describe("job selectors", () => {
  it("refuses malformed uuids everywhere", async () => {
    const { engine } = fixture;
    await expectEngineError(() => engine.query("not-a-uuid"), "invalid-argument", "UUID_INVALID", "uuid");
    await expectEngineError(() => engine.cancel("../etc"), "invalid-argument", "UUID_INVALID", "uuid");
    await expectEngineError(() => engine.watch("1234"), "invalid-argument", "UUID_INVALID", "uuid");
    await expectEngineError(() => engine.setSpeedLimit("x", 1), "invalid-argument", "UUID_INVALID", "uuid");
  });

  it("reports unknown jobs as not found everywhere", async () => {
    const { engine } = fixture;
    const unknown = "0f8fad5b-d9cb-469f-a165-70867728950e";
    await expectEngineError(() => engine.query(unknown), "not-found", "JOB_NOT_FOUND", "uuid");
    await expectEngineError(() => engine.cancel(unknown), "not-found", "JOB_NOT_FOUND", "uuid");
    await expectEngineError(() => engine.watch(unknown), "not-found", "JOB_NOT_FOUND", "uuid");
    await expectEngineError(() => engine.setSpeedLimit(unknown, 1), "not-found", "JOB_NOT_FOUND", "uuid");
  });

  it("answers an empty selector with nothing before any job ran", async () => {
    const { engine } = fixture;
    expect(engine.query()).toBeUndefined();
    expect(engine.query("")).toBeUndefined();
    expect(await engine.cancel()).toEqual([]);
  });

  it("refuses a speed change of a finished job and accepts upper-case uuids", async () => {
    const { engine } = fixture;
    const status = await start({})();
    const uuid = (status as { uuid: string }).uuid;
    const end = await waitForEnd(engine, uuid);
    await expectEngineError(() => engine.setSpeedLimit(uuid, 1000), "failed-precondition", "JOB_NOT_ACTIVE", "uuid");
    expect(engine.query(uuid.toUpperCase())).toEqual(end);
    await fs.rm(end.backupFile);
  });

  it("refuses new jobs once shut down", async () => {
    const { engine } = fixture;
    await engine.shutdown();
    await expectEngineError(start({}), "unavailable", "ENGINE_SHUT_DOWN");
  });
});
