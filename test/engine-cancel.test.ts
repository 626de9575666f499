// Jobs that stop early: cancel (fast, even when throttled to a crawl),
// device and archive locks, a source that shrinks mid-job, and shutdown.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import type { JobStatus } from "../src/engine/types.js";
import {
  backupSpec,
  blockPattern,
  expectEngineError,
  KiB,
  makeEngine,
  MiB,
  useEngineSandbox,
  waitForEnd,
  waitForTransfer,
  writeSource,
} from "./engine-helpers.js";

const fixture = useEngineSandbox();
let disk: string;

beforeEach(async () => {
  disk = await writeSource(
    fixture.sandbox,
    "disk.raw",
    blockPattern(4 * MiB, (block) => block % 3 === 0),
  );
});

function throttled(backupFile: string, devicePath: string, speedLimit = 1): Promise<JobStatus> {
  return fixture.engine.start(
    backupSpec({
      backupFile,
      devices: [{ name: "drive-scsi0", source: { kind: "path", path: devicePath } }],
      speedLimit,
    }),
  );
}

describe("cancel", () => {
  it("reaches CANCELLED within a second at 1 byte/s and removes the partial file", async () => {
    const { sandbox, engine } = fixture;
    const status = await throttled("slow.vma", disk, 1);
    // The first chunk goes through at once; then the job waits ~a day.
    await waitForTransfer(engine, status.uuid);
    expect(await fs.readdir(sandbox.out)).toEqual(["slow.vma.partial"]);

    const watcher = engine.watch(status.uuid);
    const started = performance.now();
    const statuses = await engine.cancel(status.uuid);
    const elapsed = performance.now() - started;

    expect(elapsed).toBeLessThan(1000);
    expect(statuses).toHaveLength(1);
    expect(statuses[0]).toMatchObject({ uuid: status.uuid, state: "cancelled", errorMessage: "cancelled by request" });
    expect(statuses[0]?.endTime).toBeInstanceOf(Date);
    // The partial file was gone before the terminal status was published.
    expect(await fs.readdir(sandbox.out)).toEqual([]);
    const seen: JobStatus[] = [];
    for await (const update of watcher) seen.push(update);
    expect(seen.at(-1)).toEqual(statuses[0]);
  });

  it("cancels every active job when no uuid is given", async () => {
    const { sandbox, engine } = fixture;
    const second = await writeSource(sandbox, "second.raw", Buffer.alloc(MiB, 1));
    const jobs = await Promise.all([throttled("1.vma", disk), throttled("2.vma", second)]);
    const statuses = await engine.cancel();
    expect(statuses.map((status) => status.uuid).sort()).toEqual(jobs.map((job) => job.uuid).sort());
    expect(statuses.every((status) => status.state === "cancelled")).toBe(true);
    expect(await fs.readdir(sandbox.out)).toEqual([]);
    expect(await engine.cancel()).toEqual([]);
  });

  it("leaves a finished job as it is", async () => {
    const { sandbox, engine } = fixture;
    const small = await writeSource(sandbox, "small.raw", Buffer.alloc(64 * KiB, 2));
    const status = await throttled("done.vma", small, 0);
    const end = await waitForEnd(engine, status.uuid);
    expect(await engine.cancel(status.uuid)).toEqual([end]);
    expect(await fs.readdir(sandbox.out)).toEqual(["done.vma"]);
  });
});

describe("locks", () => {
  it("refuses a device in use under any path and releases it when the job ends", async () => {
    const { sandbox, engine } = fixture;
    const small = await writeSource(sandbox, "small.raw", Buffer.alloc(512 * KiB, 7));
    const hardLink = path.join(sandbox.src, "hard.raw");
    const symlink = path.join(sandbox.src, "soft.raw");
    await fs.link(small, hardLink);
    await fs.symlink(small, symlink);
    // About half a second at 1 MiB/s.
    const first = await throttled("first.vma", small, MiB);

    for (const other of [small, hardLink, symlink]) {
      const error = await expectEngineError(
        () => throttled("second.vma", other, 0),
        "failed-precondition",
        "DEVICE_IN_USE",
        "devices[0].path",
      );
      expect(error.message).toContain(first.uuid);
    }
    // Another device into the same archive name collides as well.
    await expectEngineError(
      () => throttled("first.vma", disk, 0),
      "already-exists",
      "BACKUP_FILE_IN_USE",
      "backup_file",
    );

    expect((await waitForEnd(engine, first.uuid)).state).toBe("done");
    const second = await throttled("second.vma", hardLink, 0);
    expect((await waitForEnd(engine, second.uuid)).state).toBe("done");
  });

  it("lets exactly one of many racing requests for one device start", async () => {
    const { sandbox } = fixture;
    const attempts = await Promise.allSettled(
      Array.from({ length: 20 }, (_, index) => throttled(`race-${index}.vma`, disk, 1)),
    );
    const started = attempts.filter((attempt) => attempt.status === "fulfilled");
    const refused = attempts.flatMap((attempt) => (attempt.status === "rejected" ? [attempt.reason] : []));
    expect(started).toHaveLength(1);
    expect(refused).toHaveLength(19);
    expect(refused.every((error) => (error as { reason: string }).reason === "DEVICE_IN_USE")).toBe(true);
    expect(await fs.readdir(sandbox.out)).toHaveLength(1);
  });
});

describe("a source that shrinks", () => {
  it("ends in error naming the device and offset, with no partial file left", async () => {
    const { sandbox, engine } = fixture;
    const status = await throttled("shrink.vma", disk, MiB);
    await waitForTransfer(engine, status.uuid, 128 * KiB);
    const shrunkTo = MiB + 1000;
    await fs.truncate(disk, shrunkTo);

    const end = await waitForEnd(engine, status.uuid);
    expect(end.state).toBe("error");
    expect(end.errorMessage).toBe(
      `device drive-scsi0: source shrank: expected ${4 * MiB} bytes, got EOF at offset ${shrunkTo}`,
    );
    expect(end.transferredBytes).toBeLessThanOrEqual(MiB);
    expect(await fs.readdir(sandbox.out)).toEqual([]);
    // The device is free again.
    const again = await throttled("again.vma", disk, 0);
    expect((await waitForEnd(engine, again.uuid)).state).toBe("done");
  });
});

describe("shutdown", () => {
  it("cancels active jobs, removes their partial files and ends every subscription", async () => {
    const { sandbox, engine } = fixture;
    const status = await throttled("busy.vma", disk, 1);
    const everything = engine.watch();
    const one = engine.watch(status.uuid);
    const collect = async (source: AsyncIterable<JobStatus>): Promise<JobStatus[]> => {
      const seen: JobStatus[] = [];
      for await (const update of source) seen.push(update);
      return seen;
    };
    const allSeen = collect(everything);
    const oneSeen = collect(one);

    await engine.shutdown();
    const final = (await oneSeen).at(-1);
    expect(final).toMatchObject({ state: "cancelled", errorMessage: "cancelled: the server is shutting down" });
    expect(await fs.readdir(sandbox.out)).toEqual([]);
    expect((await allSeen).at(-1)).toEqual(final);
    // Once shut down (the job store is closed) every call is refused at
    // once instead of hanging; a second shutdown is harmless.
    for (const call of [
      () => engine.query(status.uuid),
      () => engine.watch(),
      () => engine.watch(status.uuid),
      () => engine.list({ pageSize: 0 }),
      () => engine.cancel(),
      () => engine.delete(status.uuid, { deleteArchive: false }),
      () => engine.setSpeedLimit(status.uuid, 0),
    ]) {
      await expectEngineError(call, "unavailable", "ENGINE_SHUT_DOWN");
    }
    await engine.shutdown();

    // The cancelled status was stored before it was announced.
    const reopened = makeEngine(sandbox).engine;
    expect(reopened.query(status.uuid)).toEqual(final);
    await reopened.shutdown();
  });
});
