// The archive file's lifecycle keeps its promises: a job ends DONE only when
// every byte reached the disk (a failed background flush fails the job), and
// only when the archive is where the job says it is (a backup dir renamed
// mid-job fails the job instead of recording a path that does not exist).
import type { FileHandle } from "node:fs/promises";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { createLocalStore } from "../src/stores/local/local-store.js";
import {
  backupSpec,
  blockPattern,
  MiB,
  useEngineSandbox,
  waitForEnd,
  waitForTransfer,
  writeSource,
} from "./engine-helpers.js";

/** Flushes as Linux does after a writeback error: the first call fails with EIO, later ones succeed. */
function failingOnce(): { datasync: (handle: FileHandle) => Promise<void>; calls: () => number } {
  let calls = 0;
  return {
    calls: () => calls,
    async datasync(handle) {
      calls += 1;
      if (calls === 1) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO", errno: -5 });
      await handle.datasync();
    },
  };
}

describe("a background flush that fails", () => {
  const flush = failingOnce();
  const fixture = useEngineSandbox({
    openStores: (directory) =>
      new Map([
        [
          "local",
          createLocalStore({
            name: "local",
            directory,
            fileOptions: { backgroundFlushBytes: MiB, datasync: (handle) => flush.datasync(handle) },
          }),
        ],
      ]),
  });

  it("fails the job with EIO although later flushes succeed; no archive, no partial file", async () => {
    const source = await writeSource(
      fixture.sandbox,
      "d.raw",
      blockPattern(4 * MiB, () => false),
    );
    const status = await fixture.engine.start(
      backupSpec({ backupFile: "flushed.vma", devices: [{ name: "d", source: { kind: "path", path: source } }] }),
    );
    const end = await waitForEnd(fixture.engine, status.uuid);
    expect(flush.calls()).toBeGreaterThanOrEqual(1);
    expect(end.state, end.errorMessage).toBe("error");
    expect(end.errorMessage).toMatch(/^device d: writing archive failed at offset \d+: EIO$/);
    expect(await fs.readdir(fixture.sandbox.out)).toEqual([]);
  });
});

describe("a backup dir renamed mid-job", () => {
  const fixture = useEngineSandbox();

  it("fails the job naming the moved directory; nothing is left in either place", async () => {
    const { sandbox, engine } = fixture;
    const source = await writeSource(
      sandbox,
      "d.raw",
      blockPattern(2 * MiB, (block) => block % 2 === 0),
    );
    const status = await engine.start(
      backupSpec({
        backupFile: "renamed.vma",
        devices: [{ name: "d", source: { kind: "path", path: source } }],
        speedLimit: MiB,
      }),
    );
    await waitForTransfer(engine, status.uuid);
    const moved = path.join(sandbox.root, "out-moved");
    await fs.rename(sandbox.out, moved);
    engine.setSpeedLimit(status.uuid, 0);
    const end = await waitForEnd(engine, status.uuid);
    expect(end.state, end.errorMessage).toBe("error");
    const realOut = path.join(await fs.realpath(sandbox.root), "out");
    expect(end.errorMessage).toBe(
      `device d: writing archive failed at offset ${2 * MiB}: the directory ${realOut} was moved to ` +
        `${path.join(await fs.realpath(sandbox.root), "out-moved")} while the archive was written; it was not kept`,
    );
    expect(await fs.readdir(moved)).toEqual([]);
    await expect(fs.stat(end.backupFile)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("fails the job when a subdirectory of the backup dir is renamed", async () => {
    const { sandbox, engine } = fixture;
    await fs.mkdir(path.join(sandbox.out, "vm100"));
    const source = await writeSource(
      sandbox,
      "d.raw",
      blockPattern(2 * MiB, (block) => block % 2 === 0),
    );
    const status = await engine.start(
      backupSpec({
        backupFile: "vm100/a.vma",
        devices: [{ name: "d", source: { kind: "path", path: source } }],
        speedLimit: MiB,
      }),
    );
    await waitForTransfer(engine, status.uuid);
    await fs.rename(path.join(sandbox.out, "vm100"), path.join(sandbox.out, "vm100-old"));
    engine.setSpeedLimit(status.uuid, 0);
    const end = await waitForEnd(engine, status.uuid);
    expect(end.state, end.errorMessage).toBe("error");
    expect(end.errorMessage).toMatch(/vm100 was moved to .*vm100-old while the archive was written; it was not kept$/);
    expect(await fs.readdir(path.join(sandbox.out, "vm100-old"))).toEqual([]);
  });
});
