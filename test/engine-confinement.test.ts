// Where the engine may read and write: source roots and the backup dir,
// judged after resolving symlinks and `..`, and only regular files and block
// devices as sources.
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as net from "node:net";
import * as path from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import { PathPolicy } from "../src/engine/path-policy.js";
import { openFileSource } from "../src/sources/file/file-source.js";
import {
  backupSpec,
  expectEngineError,
  KiB,
  makeEngine,
  MiB,
  ownStateDir,
  parseVma,
  useEngineSandbox,
  waitForEnd,
  writeSource,
} from "./engine-helpers.js";

const fixture = useEngineSandbox();
let outside: string;

beforeEach(async () => {
  outside = path.join(fixture.sandbox.root, "outside.raw");
  await fs.writeFile(outside, Buffer.alloc(64 * KiB, 9));
});

function backupOf(devicePath: string, backupFile = "a.vma"): () => Promise<unknown> {
  return () =>
    fixture.engine.start(
      backupSpec({ backupFile, devices: [{ name: "drive-scsi0", source: { kind: "path", path: devicePath } }] }),
    );
}

describe("source confinement", () => {
  it("refuses a symlink inside the root that points outside", async () => {
    const { sandbox } = fixture;
    const link = path.join(sandbox.src, "escape.raw");
    await fs.symlink(outside, link);
    await expectEngineError(backupOf(link), "permission-denied", "PATH_NOT_ALLOWED", "devices[0].path");
  });

  it("refuses a symlinked directory inside the root that points outside", async () => {
    const { sandbox } = fixture;
    await fs.symlink(sandbox.root, path.join(sandbox.src, "up"));
    await expectEngineError(
      backupOf(path.join(sandbox.src, "up", "outside.raw")),
      "permission-denied",
      "PATH_NOT_ALLOWED",
      "devices[0].path",
    );
  });

  it("refuses `..` escapes, absolute and relative", async () => {
    const { sandbox } = fixture;
    await expectEngineError(
      backupOf(`${sandbox.src}/../outside.raw`),
      "permission-denied",
      "PATH_NOT_ALLOWED",
      "devices[0].path",
    );
    await expectEngineError(backupOf("../outside.raw"), "permission-denied", "PATH_NOT_ALLOWED", "devices[0].path");
  });

  it("refuses a path outside before looking at it (no existence leak)", async () => {
    const { sandbox } = fixture;
    await expectEngineError(
      backupOf(path.join(sandbox.root, "does-not-exist.raw")),
      "permission-denied",
      "PATH_NOT_ALLOWED",
      "devices[0].path",
    );
  });

  it("follows symlinks that stay inside, and resolves relative paths under the source root", async () => {
    const { sandbox, engine } = fixture;
    const data = Buffer.alloc(100 * KiB, 3);
    await writeSource(sandbox, "real.raw", data);
    await fs.symlink("real.raw", path.join(sandbox.src, "alias.raw"));
    const status = (await engine.start(
      backupSpec({ devices: [{ name: "drive-scsi0", source: { kind: "path", path: "alias.raw" } }] }),
    )) as {
      uuid: string;
    };
    const end = await waitForEnd(engine, status.uuid);
    expect(end.state).toBe("done");
    const archive = await parseVma(end.backupFile);
    expect(archive.devices[0]?.data.equals(data)).toBe(true);
  });

  it("accepts a source root that is itself a symlink, by either path", async () => {
    const { sandbox } = fixture;
    const linkedRoot = path.join(sandbox.root, "linked-src");
    await fs.symlink(sandbox.src, linkedRoot);
    const linked = makeEngine(sandbox, { sourceRoots: [linkedRoot], stateDir: ownStateDir(sandbox) }).engine;
    await writeSource(sandbox, "d.raw", Buffer.alloc(64 * KiB, 1));
    try {
      for (const [index, devicePath] of [path.join(linkedRoot, "d.raw"), path.join(sandbox.src, "d.raw")].entries()) {
        const status = await linked.start(
          backupSpec({
            backupFile: `r${index}.vma`,
            devices: [{ name: "d", source: { kind: "path", path: devicePath } }],
          }),
        );
        expect((await waitForEnd(linked, status.uuid)).state).toBe("done");
      }
    } finally {
      await linked.shutdown();
    }
  });
});

describe("source types", () => {
  it("refuses a directory", async () => {
    const { sandbox } = fixture;
    await fs.mkdir(path.join(sandbox.src, "dir"));
    const error = await expectEngineError(
      backupOf(path.join(sandbox.src, "dir")),
      "failed-precondition",
      "SOURCE_TYPE_UNSUPPORTED",
      "devices[0].path",
    );
    expect(error.message).toContain("directory");
  });

  it("refuses a FIFO without waiting for a writer", async () => {
    const { sandbox } = fixture;
    const fifo = path.join(sandbox.src, "fifo");
    execFileSync("mkfifo", [fifo]);
    const started = performance.now();
    const error = await expectEngineError(
      backupOf(fifo),
      "failed-precondition",
      "SOURCE_TYPE_UNSUPPORTED",
      "devices[0].path",
    );
    expect(error.message).toContain("FIFO");
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it("refuses /dev/zero: outside the roots, and as a character device when /dev is a root", async () => {
    const { sandbox } = fixture;
    await expectEngineError(backupOf("/dev/zero"), "permission-denied", "PATH_NOT_ALLOWED", "devices[0].path");
    const withDev = makeEngine(sandbox, { sourceRoots: [sandbox.src, "/dev"], stateDir: ownStateDir(sandbox) }).engine;
    try {
      const error = await expectEngineError(
        () => withDev.start(backupSpec({ devices: [{ name: "zero", source: { kind: "path", path: "/dev/zero" } }] })),
        "failed-precondition",
        "SOURCE_TYPE_UNSUPPORTED",
        "devices[0].path",
      );
      expect(error.message).toContain("character device");
    } finally {
      await withDev.shutdown();
    }
  });

  it("refuses a Unix socket", async () => {
    const { sandbox } = fixture;
    const socketPath = path.join(sandbox.src, "sock");
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      await expectEngineError(
        backupOf(socketPath),
        "failed-precondition",
        "SOURCE_TYPE_UNSUPPORTED",
        "devices[0].path",
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("refuses a source the server cannot read", async () => {
    const { sandbox } = fixture;
    const secret = await writeSource(sandbox, "secret.raw", Buffer.alloc(4 * KiB, 1));
    await fs.chmod(secret, 0o000);
    let outcome: { code?: string; reason?: string; field?: string };
    if (process.getuid?.() === 0) {
      // root reads anything: check the open as an unprivileged user in a child process.
      await fs.chmod(sandbox.root, 0o755);
      await fs.chmod(sandbox.src, 0o755);
      const script = `
        import { PathPolicy } from ${JSON.stringify(path.resolve("src/engine/path-policy.ts"))};
        import { openFileSource } from ${JSON.stringify(path.resolve("src/sources/file/file-source.ts"))};
        const policy = new PathPolicy(${JSON.stringify(sandbox.out)}, [${JSON.stringify(sandbox.src)}]);
        try { await openFileSource(policy, ${JSON.stringify(secret)}, "devices[0].path"); console.log("{}"); }
        catch (e) { console.log(JSON.stringify({ code: e.code, reason: e.reason, field: e.field })); }`;
      const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
        uid: 65534,
        gid: 65534,
        encoding: "utf8",
      });
      expect(child.stderr).toBe("");
      outcome = JSON.parse(child.stdout) as typeof outcome;
    } else {
      const policy = new PathPolicy(sandbox.out, [sandbox.src]);
      outcome = await openFileSource(policy, secret, "devices[0].path").then(
        () => ({}),
        (error: { code: string; reason: string; field: string }) => ({
          code: error.code,
          reason: error.reason,
          field: error.field,
        }),
      );
    }
    expect(outcome).toEqual({ code: "failed-precondition", reason: "SOURCE_UNREADABLE", field: "devices[0].path" });
  });

  it("reads a block device, sized from sysfs", async (context) => {
    const { sandbox } = fixture;
    const image = path.join(sandbox.root, "loop.img");
    await fs.writeFile(image, Buffer.alloc(MiB + 512 * KiB, 0x5a));
    let loop: string;
    try {
      loop = execFileSync("losetup", ["--find", "--show", image], { encoding: "utf8", stdio: "pipe" }).trim();
    } catch {
      context.skip(); // needs root and loop devices
      return;
    }
    const withDev = makeEngine(sandbox, { sourceRoots: [sandbox.src, "/dev"], stateDir: ownStateDir(sandbox) }).engine;
    try {
      const status = await withDev.start(
        backupSpec({ devices: [{ name: "loop", source: { kind: "path", path: loop } }] }),
      );
      expect(status.totalBytes).toBe(MiB + 512 * KiB);
      const end = await waitForEnd(withDev, status.uuid);
      expect(end.state).toBe("done");
      const archive = await parseVma(end.backupFile);
      expect(archive.devices[0]?.data.equals(await fs.readFile(image))).toBe(true);
    } finally {
      await withDev.shutdown();
      execFileSync("losetup", ["--detach", loop]);
    }
  });
});

describe("archive confinement", () => {
  const disk = (): string => path.join(fixture.sandbox.src, "disk.raw");
  beforeEach(async () => {
    await writeSource(fixture.sandbox, "disk.raw", Buffer.alloc(64 * KiB, 1));
  });

  it("refuses `..` and absolute paths outside the backup dir", async () => {
    const { sandbox } = fixture;
    await expectEngineError(backupOf(disk(), "../escape.vma"), "permission-denied", "PATH_NOT_ALLOWED", "backup_file");
    await expectEngineError(
      backupOf(disk(), path.join(sandbox.root, "escape.vma")),
      "permission-denied",
      "PATH_NOT_ALLOWED",
      "backup_file",
    );
    expect(await fs.readdir(sandbox.root)).not.toContain("escape.vma");
  });

  it("refuses a symlinked directory inside the backup dir that points outside", async () => {
    const { sandbox } = fixture;
    const elsewhere = path.join(sandbox.root, "elsewhere");
    await fs.mkdir(elsewhere);
    await fs.symlink(elsewhere, path.join(sandbox.out, "link"));
    await expectEngineError(backupOf(disk(), "link/a.vma"), "permission-denied", "PATH_NOT_ALLOWED", "backup_file");
    expect(await fs.readdir(elsewhere)).toEqual([]);
  });

  it("accepts a backup dir that is itself a symlink and reports the real path", async () => {
    const { sandbox } = fixture;
    const linkedOut = path.join(sandbox.root, "linked-out");
    await fs.symlink(sandbox.out, linkedOut);
    const linked = makeEngine(sandbox, { backupDir: linkedOut, stateDir: ownStateDir(sandbox) }).engine;
    try {
      const status = await linked.start(
        backupSpec({ backupFile: "a.vma", devices: [{ name: "d", source: { kind: "path", path: disk() } }] }),
      );
      expect(status.backupFile).toBe(path.join(await fs.realpath(sandbox.out), "a.vma"));
      expect((await waitForEnd(linked, status.uuid)).state).toBe("done");
      expect(await fs.readdir(sandbox.out)).toEqual(["a.vma"]);
    } finally {
      await linked.shutdown();
    }
  });

  it("refuses to start when a configured directory does not exist", () => {
    const { sandbox } = fixture;
    expect(() => makeEngine(sandbox, { backupDir: path.join(sandbox.root, "missing") })).toThrow(/backup dir/);
    expect(() => makeEngine(sandbox, { sourceRoots: [path.join(sandbox.root, "missing")] })).toThrow(/source root/);
  });
});
