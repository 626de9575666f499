// Every RPC of BackupService against a real server on 127.0.0.1 with real
// source images and archives in temporary directories.
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { halfRandomImage, useSharedTestServer } from "./helpers/test-server.js";

const MiB = 1024 * 1024;
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TERMINAL = new Set([BackupState.DONE, BackupState.ERROR, BackupState.CANCELLED]);

const fixture = useSharedTestServer({ progressIntervalMs: 50 });
let fileCounter = 0;

/** A fresh archive name, so that jobs never collide on their backup_file. */
function archiveName(): string {
  fileCounter += 1;
  return `rpc-${fileCounter}.vma`;
}

/** A source image of `size` bytes with some data and some zeros. */
async function source(name: string, size: number): Promise<string> {
  return fixture.server.writeSource(name, halfRandomImage(size));
}

/** Starts a job that stays ACTIVE for seconds (a 16 MiB source at 2 MiB/s). */
async function startSlowJob(deviceName = "drive-scsi0", sourceName = "slow.raw"): Promise<BackupStatus> {
  const { server, client } = fixture;
  const devicePath = existsSync(path.join(server.sourceDir, sourceName))
    ? path.join(server.sourceDir, sourceName)
    : await source(sourceName, 16 * MiB);
  const response = await client.backup({
    backupFile: archiveName(),
    devices: [{ name: deviceName, path: devicePath }],
    speedLimit: BigInt(2 * MiB),
  });
  return response.status!;
}

/** Starts a small unthrottled job and waits until it is done. */
async function runQuickJob(): Promise<BackupStatus> {
  const devicePath = await source(`quick-${fileCounter}.raw`, 256 * 1024);
  const response = await fixture.client.backup({
    backupFile: archiveName(),
    devices: [{ name: "drive-virtio0", path: devicePath }],
  });
  return waitForEnd(response.status!.uuid);
}

/** Follows a job to its terminal status. */
async function waitForEnd(uuid: string): Promise<BackupStatus> {
  let last: BackupStatus | undefined;
  for await (const message of fixture.client.watchBackup({ uuid })) last = message.status;
  expect(last && TERMINAL.has(last.state)).toBe(true);
  return last!;
}

function expectCode(promise: Promise<unknown>, code: grpc.status, messagePart: RegExp): Promise<void> {
  return expect(promise).rejects.toMatchObject({ code, details: expect.stringMatching(messagePart) });
}

/** Polls `condition` every 10 ms; fails the test after 2 s. */
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 2000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met in time: ${condition.toString()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function drain(stream: AsyncIterable<{ status?: BackupStatus | undefined }>): Promise<BackupStatus[]> {
  const statuses: BackupStatus[] = [];
  for await (const message of stream) statuses.push(message.status!);
  return statuses;
}

describe("QueryBackup before any job", () => {
  it("returns no status for an empty uuid when no job has ever run", async () => {
    const { client } = fixture;
    const response = await client.queryBackup({ uuid: "" });
    expect(response.status).toBeUndefined();
  });

  it("cancels nothing when no job is active", async () => {
    const { client } = fixture;
    const response = await client.cancelBackup({ uuid: "" });
    expect(response.statuses).toEqual([]);
  });
});

describe("Backup", () => {
  it("starts a job and answers at once with an ACTIVE status", async () => {
    const { server } = fixture;
    const before = Date.now();
    const status = await startSlowJob();
    expect(status.uuid).toMatch(UUID_PATTERN);
    expect(status.state).toBe(BackupState.ACTIVE);
    expect(path.dirname(status.backupFile)).toBe(server.backupDir);
    expect(status.backupFile.endsWith(".vma")).toBe(true);
    expect(status.totalBytes).toBe(BigInt(16 * MiB));
    expect(status.speedLimit).toBe(BigInt(2 * MiB));
    expect(status.devices).toHaveLength(1);
    expect(status.devices[0]).toMatchObject({ name: "drive-scsi0", devId: 1, size: BigInt(16 * MiB) });
    expect(status.endTime).toBeUndefined();
    const started = timestampDate(status.startTime!).getTime();
    expect(started).toBeGreaterThanOrEqual(before - 1000);
    expect(started).toBeLessThanOrEqual(Date.now() + 1000);
  });
});

describe("QueryBackup", () => {
  it("finds a job by uuid, and the most recent one for an empty uuid", async () => {
    const { client } = fixture;
    const first = await startSlowJob("drive-scsi0", "a.raw");
    const second = await startSlowJob("drive-scsi1", "b.raw");
    const byUuid = await client.queryBackup({ uuid: first.uuid });
    expect(byUuid.status?.uuid).toBe(first.uuid);
    expect(byUuid.status?.state).toBe(BackupState.ACTIVE);
    // Upper case is the same uuid.
    const upper = await client.queryBackup({ uuid: first.uuid.toUpperCase() });
    expect(upper.status?.uuid).toBe(first.uuid);
    const latest = await client.queryBackup({ uuid: "" });
    expect(latest.status?.uuid).toBe(second.uuid);
  });

  it("is NOT_FOUND for an unknown uuid and INVALID_ARGUMENT for a malformed one", async () => {
    const { client } = fixture;
    await expectCode(client.queryBackup({ uuid: randomUUID() }), grpc.status.NOT_FOUND, /./);
    await expectCode(client.queryBackup({ uuid: "not-a-uuid" }), grpc.status.INVALID_ARGUMENT, /uuid/);
  });
});

describe("CancelBackup", () => {
  it("cancels one job by uuid within a second and removes its partial file", async () => {
    const { server, client } = fixture;
    const job = await startSlowJob();
    const other = await startSlowJob("drive-scsi1", "other.raw");
    const started = Date.now();
    const response = await client.cancelBackup({ uuid: job.uuid });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(response.statuses).toHaveLength(1);
    expect(response.statuses[0]).toMatchObject({ uuid: job.uuid, state: BackupState.CANCELLED });
    expect(response.statuses[0]!.endTime).toBeDefined();
    // The other job goes on.
    expect((await client.queryBackup({ uuid: other.uuid })).status?.state).toBe(BackupState.ACTIVE);
    const left = await readdir(server.backupDir);
    expect(left.filter((name) => name.startsWith(path.basename(job.backupFile)))).toEqual([]);
    expect(existsSync(job.backupFile)).toBe(false);
  });

  it("cancels every active job for an empty uuid", async () => {
    const { client } = fixture;
    const a = await startSlowJob("drive-scsi0", "all-a.raw");
    const b = await startSlowJob("drive-scsi1", "all-b.raw");
    const response = await client.cancelBackup({ uuid: "" });
    const byUuid = new Map(response.statuses.map((status) => [status.uuid, status.state]));
    expect(byUuid.get(a.uuid)).toBe(BackupState.CANCELLED);
    expect(byUuid.get(b.uuid)).toBe(BackupState.CANCELLED);
    expect([...byUuid.values()].every((state) => state === BackupState.CANCELLED)).toBe(true);
  });

  it("leaves a finished job as it was", async () => {
    const { client } = fixture;
    const done = await runQuickJob();
    expect(done.state).toBe(BackupState.DONE);
    const response = await client.cancelBackup({ uuid: done.uuid });
    expect(response.statuses).toHaveLength(1);
    expect(response.statuses[0]).toEqual(done);
    expect(existsSync(done.backupFile)).toBe(true);
  });

  it("is NOT_FOUND for an unknown uuid and INVALID_ARGUMENT for a malformed one", async () => {
    const { client } = fixture;
    await expectCode(client.cancelBackup({ uuid: randomUUID() }), grpc.status.NOT_FOUND, /./);
    await expectCode(client.cancelBackup({ uuid: "1234" }), grpc.status.INVALID_ARGUMENT, /uuid/);
  });
});

describe("WatchBackup", () => {
  it("opens with the current status, follows state changes in order and ends OK", async () => {
    const { client } = fixture;
    const job = await startSlowJob();
    const watching = drain(client.watchBackup({ uuid: job.uuid }));
    await new Promise((resolve) => setTimeout(resolve, 300));
    await client.cancelBackup({ uuid: job.uuid });
    const statuses = await watching;
    expect(statuses[0]!.uuid).toBe(job.uuid);
    expect(statuses[0]!.state).toBe(BackupState.ACTIVE);
    expect(statuses.at(-1)!.state).toBe(BackupState.CANCELLED);
    // Exactly one terminal status, last; progress never goes backwards.
    expect(statuses.filter((status) => TERMINAL.has(status.state))).toHaveLength(1);
    for (let i = 1; i < statuses.length; i += 1) {
      expect(statuses[i]!.transferredBytes).toBeGreaterThanOrEqual(statuses[i - 1]!.transferredBytes);
    }
    // Progress arrived while the job ran (2 MiB/s, 50 ms interval).
    expect(statuses.length).toBeGreaterThan(2);
  });

  it("sends the terminal status of a finished job and ends", async () => {
    const { client } = fixture;
    const done = await runQuickJob();
    const statuses = await drain(client.watchBackup({ uuid: done.uuid }));
    expect(statuses).toEqual([done]);
  });

  it("serves several watchers at once, one of which leaves early", async () => {
    const { server, client } = fixture;
    const job = await startSlowJob();
    const stayers = [1, 2, 3].map(() => drain(client.watchBackup({ uuid: job.uuid })));
    let leaverSaw = 0;
    for await (const _ of client.watchBackup({ uuid: job.uuid })) {
      leaverSaw += 1;
      if (leaverSaw === 2) break;
    }
    expect(leaverSaw).toBe(2);
    // The server lets go of the stream that left, and keeps the others.
    await until(() => server.server.watchStreamCount === 3);
    await client.cancelBackup({ uuid: job.uuid });
    for (const statuses of await Promise.all(stayers)) {
      expect(statuses[0]!.state).toBe(BackupState.ACTIVE);
      expect(statuses.at(-1)!.state).toBe(BackupState.CANCELLED);
    }
    await until(() => server.server.watchStreamCount === 0);
  });

  it("with an empty uuid follows jobs started later, until the client leaves", async () => {
    const { server, client } = fixture;
    const controller = new AbortController();
    const seen: BackupStatus[] = [];
    const startedLater = new Promise<void>((resolve, reject) => {
      (async () => {
        try {
          for await (const message of client.watchBackup({ uuid: "" }, { signal: controller.signal })) {
            seen.push(message.status!);
            if (message.status!.state === BackupState.CANCELLED) resolve();
          }
        } catch (error) {
          if ((error as grpc.ServiceError).code !== grpc.status.CANCELLED) reject(error);
        }
      })();
    });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const job = await startSlowJob();
    await new Promise((resolve) => setTimeout(resolve, 200));
    await client.cancelBackup({ uuid: job.uuid });
    await startedLater;
    expect(server.server.watchStreamCount).toBe(1);
    controller.abort();
    await until(() => server.server.watchStreamCount === 0);
    const ofJob = seen.filter((status) => status.uuid === job.uuid);
    expect(ofJob[0]!.state).toBe(BackupState.ACTIVE);
    expect(ofJob.at(-1)!.state).toBe(BackupState.CANCELLED);
  });

  it("is NOT_FOUND for an unknown uuid and INVALID_ARGUMENT for a malformed one", async () => {
    const { client } = fixture;
    await expectCode(drain(client.watchBackup({ uuid: randomUUID() })), grpc.status.NOT_FOUND, /./);
    await expectCode(drain(client.watchBackup({ uuid: "zzz" })), grpc.status.INVALID_ARGUMENT, /uuid/);
  });
});
