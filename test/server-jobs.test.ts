// The job-management RPCs against a real server on 127.0.0.1: ListBackups,
// SetBackupSpeed, DeleteBackup, Backup.request_id, the status fields that
// came with them (rate, eta, revision, update_time, request_id), and every
// error code of the new RPCs with its ErrorInfo reason.
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { BackupFormat, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { readErrorDetails } from "../src/client/rpc-error-details.js";
import { expectRefusal } from "./helpers/rpc-failure.js";
import { halfRandomImage, useSharedTestServer } from "./helpers/test-server.js";

const KiB = 1024;
const MiB = 1024 * KiB;

const fixture = useSharedTestServer({ progressIntervalMs: 50 });
let counter = 0;

/** A fresh name, so that jobs never collide on a source or an archive. */
function unique(prefix: string): string {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** A source with random data in its first half. */
async function source(size: number): Promise<string> {
  return fixture.server.writeSource(`${unique("src")}.raw`, halfRandomImage(size));
}

/** A job that stays ACTIVE for a long time (8 MiB at 256 KiB/s: 32 s) unless told otherwise. */
async function startSlowJob(
  options: { requestId?: string; backupFile?: string; sourcePath?: string } = {},
): Promise<BackupStatus> {
  const response = await fixture.client.backup({
    backupFile: options.backupFile ?? `${unique("slow")}.vma`,
    devices: [{ name: "drive-scsi0", path: options.sourcePath ?? (await source(8 * MiB)) }],
    speedLimit: BigInt(256 * KiB),
    requestId: options.requestId ?? "",
  });
  return response.status!;
}

async function waitForEnd(uuid: string): Promise<BackupStatus> {
  let last: BackupStatus | undefined;
  for await (const message of fixture.client.watchBackup({ uuid })) last = message.status;
  return last!;
}

/** A small unthrottled job, followed to its end. */
async function runQuickJob(): Promise<BackupStatus> {
  const response = await fixture.client.backup({
    backupFile: `${unique("quick")}.vma`,
    devices: [{ name: "drive-virtio0", path: await source(256 * KiB) }],
  });
  return waitForEnd(response.status!.uuid);
}

async function listAll(states: BackupState[] = [], pageSize = 0): Promise<BackupStatus[]> {
  const all: BackupStatus[] = [];
  let pageToken = "";
  do {
    const page = await fixture.client.listBackups({ pageSize, pageToken, states });
    all.push(...page.statuses);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return all;
}

describe("ListBackups", () => {
  it("lists every job newest first, with live counters for active ones, and filters by state", async () => {
    const { client } = fixture;
    const done = await runQuickJob();
    const cancelled = await startSlowJob();
    await client.cancelBackup({ uuid: cancelled.uuid });
    const active = await startSlowJob();

    const all = await listAll();
    const positions = [active, cancelled, done].map((job) => all.findIndex((status) => status.uuid === job.uuid));
    expect(positions.every((position) => position >= 0)).toBe(true);
    expect([...positions].sort((a, b) => a - b)).toEqual(positions);
    expect(all[positions[0]!]!.state).toBe(BackupState.ACTIVE);
    expect(all[positions[1]!]!.state).toBe(BackupState.CANCELLED);
    expect(all[positions[2]!]).toEqual(done);

    const finished = await listAll([BackupState.DONE, BackupState.CANCELLED], 1);
    expect(finished.map((status) => status.uuid)).toEqual(
      all.filter((status) => status.state !== BackupState.ACTIVE).map((status) => status.uuid),
    );
    const onlyActive = await listAll([BackupState.ACTIVE]);
    expect(onlyActive.map((status) => status.uuid)).toEqual([active.uuid]);
  });

  it("gives pages of page_size with a token, and an empty token on the last page", async () => {
    const { client } = fixture;
    await runQuickJob();
    await runQuickJob();
    const first = await client.listBackups({ pageSize: 1 });
    expect(first.statuses).toHaveLength(1);
    expect(first.nextPageToken).not.toBe("");
    const everything = await client.listBackups({ pageSize: 1000 });
    expect(everything.nextPageToken).toBe("");
    expect(everything.statuses[0]!.uuid).toBe(first.statuses[0]!.uuid);
  });

  it("refuses a negative page_size, an unknown state and a page_token it never gave", async () => {
    const { client } = fixture;
    await expectRefusal(
      client.listBackups({ pageSize: -1 }),
      grpc.status.INVALID_ARGUMENT,
      "PAGE_SIZE_INVALID",
      "page_size",
    );
    await expectRefusal(
      client.listBackups({ states: [BackupState.DONE, 42 as BackupState] }),
      grpc.status.INVALID_ARGUMENT,
      "JOB_STATE_INVALID",
      "states[1]",
    );
    await expectRefusal(
      client.listBackups({ states: [BackupState.UNSPECIFIED] }),
      grpc.status.INVALID_ARGUMENT,
      "JOB_STATE_INVALID",
      "states[0]",
    );
    await expectRefusal(
      client.listBackups({ pageToken: "not-a-token" }),
      grpc.status.INVALID_ARGUMENT,
      "PAGE_TOKEN_INVALID",
      "page_token",
    );
  });
});

describe("SetBackupSpeed", () => {
  it("changes an active job's limit at once; 0 lifts it and the job finishes", async () => {
    const { client } = fixture;
    const job = await startSlowJob();
    const faster = await client.setBackupSpeed({ uuid: job.uuid, speedLimit: BigInt(MiB) });
    expect(faster.status).toMatchObject({ uuid: job.uuid, state: BackupState.ACTIVE, speedLimit: BigInt(MiB) });
    expect(faster.status!.revision).toBeGreaterThan(job.revision);
    expect((await client.queryBackup({ uuid: job.uuid })).status?.speedLimit).toBe(BigInt(MiB));

    const started = Date.now();
    const unlimited = await client.setBackupSpeed({ uuid: job.uuid.toUpperCase(), speedLimit: 0n });
    expect(unlimited.status?.speedLimit).toBe(0n);
    const end = await waitForEnd(job.uuid);
    // 8 MiB would take 32 s at the old limit.
    expect(end.state).toBe(BackupState.DONE);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(end.speedLimit).toBe(0n);
  });

  it("refuses a finished job, an unknown, empty or malformed uuid and a limit beyond 2^53", async () => {
    const { client } = fixture;
    const done = await runQuickJob();
    const finished = await expectRefusal(
      client.setBackupSpeed({ uuid: done.uuid, speedLimit: 1n }),
      grpc.status.FAILED_PRECONDITION,
      "JOB_NOT_ACTIVE",
      "uuid",
    );
    expect(finished.details).toContain(done.uuid);
    const unknown = randomUUID();
    const missing = await expectRefusal(
      client.setBackupSpeed({ uuid: unknown, speedLimit: 1n }),
      grpc.status.NOT_FOUND,
      "JOB_NOT_FOUND",
      "uuid",
    );
    expect(missing.details).toContain(unknown);
    await expectRefusal(
      client.setBackupSpeed({ uuid: "", speedLimit: 1n }),
      grpc.status.INVALID_ARGUMENT,
      "UUID_REQUIRED",
      "uuid",
    );
    await expectRefusal(
      client.setBackupSpeed({ uuid: "x-1", speedLimit: 1n }),
      grpc.status.INVALID_ARGUMENT,
      "UUID_INVALID",
      "uuid",
    );
    const job = await startSlowJob();
    await expectRefusal(
      client.setBackupSpeed({ uuid: job.uuid, speedLimit: BigInt(Number.MAX_SAFE_INTEGER) + 1n }),
      grpc.status.INVALID_ARGUMENT,
      "SPEED_LIMIT_INVALID",
      "speed_limit",
    );
    // The refused change left the limit alone.
    expect((await client.queryBackup({ uuid: job.uuid })).status?.speedLimit).toBe(BigInt(256 * KiB));
  });
});

describe("DeleteBackup", () => {
  it("forgets a finished job and keeps its archive unless asked", async () => {
    const { client } = fixture;
    const kept = await runQuickJob();
    const removed = await runQuickJob();
    expect(existsSync(kept.backupFile) && existsSync(removed.backupFile)).toBe(true);

    await client.deleteBackup({ uuid: kept.uuid });
    await client.deleteBackup({ uuid: removed.uuid, deleteArchive: true });

    expect(existsSync(kept.backupFile)).toBe(true);
    expect(existsSync(removed.backupFile)).toBe(false);
    for (const job of [kept, removed]) {
      await expectRefusal(client.queryBackup({ uuid: job.uuid }), grpc.status.NOT_FOUND, "JOB_NOT_FOUND", "uuid");
    }
    const listed = new Set((await listAll()).map((status) => status.uuid));
    expect(listed.has(kept.uuid) || listed.has(removed.uuid)).toBe(false);
    // A second delete finds nothing.
    await expectRefusal(client.deleteBackup({ uuid: kept.uuid }), grpc.status.NOT_FOUND, "JOB_NOT_FOUND", "uuid");
  });

  it("forgets a cancelled job (which left no archive) even with delete_archive", async () => {
    const { client } = fixture;
    const job = await startSlowJob();
    await client.cancelBackup({ uuid: job.uuid });
    await client.deleteBackup({ uuid: job.uuid, deleteArchive: true });
    await expectRefusal(client.queryBackup({ uuid: job.uuid }), grpc.status.NOT_FOUND, "JOB_NOT_FOUND");
  });

  it("refuses an active job, and an unknown, empty or malformed uuid", async () => {
    const { client } = fixture;
    const job = await startSlowJob();
    const active = await expectRefusal(
      client.deleteBackup({ uuid: job.uuid, deleteArchive: true }),
      grpc.status.FAILED_PRECONDITION,
      "JOB_ACTIVE",
      "uuid",
    );
    expect(active.details).toContain(job.uuid);
    expect((await client.queryBackup({ uuid: job.uuid })).status?.state).toBe(BackupState.ACTIVE);
    await expectRefusal(client.deleteBackup({ uuid: randomUUID() }), grpc.status.NOT_FOUND, "JOB_NOT_FOUND", "uuid");
    await expectRefusal(client.deleteBackup({ uuid: "" }), grpc.status.INVALID_ARGUMENT, "UUID_REQUIRED", "uuid");
    await expectRefusal(client.deleteBackup({ uuid: "../x" }), grpc.status.INVALID_ARGUMENT, "UUID_INVALID", "uuid");
  });
});

describe("Backup with a request_id", () => {
  it("returns the job the first request started when retried, while active and after it ended", async () => {
    const { server, client } = fixture;
    const requestId = `retry-${randomUUID()}`;
    const backupFile = `${unique("idempotent")}.vma`;
    const sourcePath = await source(8 * MiB);
    const first = await startSlowJob({ requestId, backupFile, sourcePath });
    expect(first.requestId).toBe(requestId);
    const before = (await listAll()).length;

    // The same name and source: a second job would fail on both; a retry returns the first.
    const retried = await startSlowJob({ requestId, backupFile, sourcePath });
    expect(retried.uuid).toBe(first.uuid);
    expect(retried.requestId).toBe(requestId);
    expect(retried.state).toBe(BackupState.ACTIVE);

    await client.cancelBackup({ uuid: first.uuid });
    const afterEnd = await startSlowJob({ requestId, backupFile, sourcePath });
    expect(afterEnd).toMatchObject({ uuid: first.uuid, state: BackupState.CANCELLED });
    expect((await listAll()).length).toBe(before);
    expect((await readdir(server.backupDir)).filter((name) => name.startsWith(path.parse(backupFile).name))).toEqual(
      [],
    );
  });

  it("refuses the request_id of an earlier job with a different request: ALREADY_EXISTS naming that job", async () => {
    const { server } = fixture;
    const requestId = `reused-${randomUUID()}`;
    const sourcePath = await source(8 * MiB);
    const backupFile = `${unique("first")}.vma`;
    const first = await startSlowJob({ requestId, backupFile, sourcePath });
    const before = (await listAll()).length;
    const other = `${unique("other")}.vma`;

    // The same request spelled differently on the wire (the default format named) is a retry.
    const spelled = await fixture.client.backup({
      backupFile,
      format: BackupFormat.VMA,
      devices: [{ name: "drive-scsi0", path: sourcePath }],
      speedLimit: BigInt(256 * KiB),
      requestId,
    });
    expect(spelled.status!.uuid).toBe(first.uuid);

    const error = await expectRefusal(
      startSlowJob({ requestId, backupFile: other, sourcePath }),
      grpc.status.ALREADY_EXISTS,
      "REQUEST_ID_REUSED",
      "request_id",
    );
    expect(readErrorDetails(error)?.errorInfo?.metadata).toMatchObject({ uuid: first.uuid });
    expect(error.details).toContain(first.uuid);
    expect(error.details).toContain("new request_id");
    expect((await listAll()).length).toBe(before);
    expect(await readdir(server.backupDir)).not.toContain(other);
    await fixture.client.cancelBackup({ uuid: first.uuid });
  });

  it("starts separate jobs for separate request ids and refuses one over 128 bytes", async () => {
    const a = await startSlowJob({ requestId: `a-${randomUUID()}` });
    const b = await startSlowJob({ requestId: `b-${randomUUID()}` });
    expect(a.uuid).not.toBe(b.uuid);
    await expectRefusal(
      startSlowJob({ requestId: "r".repeat(129) }),
      grpc.status.INVALID_ARGUMENT,
      "REQUEST_ID_INVALID",
      "request_id",
    );
  });
});

describe("status fields", () => {
  it("carry rate and ETA while active, a revision that grows with every change, and update_time", async () => {
    const { client } = fixture;
    const job = await startSlowJob();
    expect(job.revision).toBeGreaterThan(0n);
    expect(job.updateTime).toBeDefined();
    const seen: BackupStatus[] = [];
    for await (const message of client.watchBackup({ uuid: job.uuid })) {
      seen.push(message.status!);
      if (seen.length === 1) {
        await new Promise((resolve) => setTimeout(resolve, 1200));
        await client.cancelBackup({ uuid: job.uuid });
      }
    }
    for (let i = 1; i < seen.length; i += 1) {
      expect(seen[i]!.revision).toBeGreaterThan(seen[i - 1]!.revision);
      expect(timestampMs(seen[i]!.updateTime!)).toBeGreaterThanOrEqual(timestampMs(seen[i - 1]!.updateTime!));
    }
    // Progress while throttled at 256 KiB/s: the measured rate is near the
    // limit, and the ETA is what is left at that rate.
    const moving = seen.filter((status) => status.state === BackupState.ACTIVE && status.rate > 0n);
    expect(moving.length).toBeGreaterThan(0);
    const last = moving.at(-1)!;
    expect(Number(last.rate)).toBeGreaterThan(128 * KiB);
    expect(Number(last.rate)).toBeLessThan(512 * KiB);
    const left = Number(last.totalBytes - last.transferredBytes);
    expect(durationMs(last.eta!)).toBeGreaterThan(((left / Number(last.rate)) * 1000) / 2);
    expect(durationMs(last.eta!)).toBeLessThan((left / Number(last.rate)) * 1000 * 2);

    const end = seen.at(-1)!;
    expect(end.state).toBe(BackupState.CANCELLED);
    expect(end.rate).toBe(0n);
    expect(end.eta).toBeUndefined();
    expect(end.endTime).toBeDefined();
  });
});

describe("WatchBackup errors", () => {
  it("carry their details in the trailer of the stream", async () => {
    const { client } = fixture;
    const drain = async (uuid: string, afterRevision = 0n): Promise<void> => {
      for await (const _ of client.watchBackup({ uuid, afterRevision })) {
        // nothing arrives before the error
      }
    };
    await expectRefusal(drain(randomUUID()), grpc.status.NOT_FOUND, "JOB_NOT_FOUND", "uuid");
    await expectRefusal(drain("nope"), grpc.status.INVALID_ARGUMENT, "UUID_INVALID", "uuid");
    await expectRefusal(
      drain("", BigInt(Number.MAX_SAFE_INTEGER) + 1n),
      grpc.status.INVALID_ARGUMENT,
      "AFTER_REVISION_INVALID",
      "after_revision",
    );
  });
});
