// SetBackupSpeed mid-job, seen from a client: the measured rate in the
// status follows a change of the limit within 2 seconds, up and down
// (2 MiB/s -> 8 MiB/s -> 2 MiB/s), on a real server on 127.0.0.1.
import { open } from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupStatus } from "../gen/vmabackup/v1/backup_pb.js";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

const MiB = 1024 * 1024;
const SLOW = 2 * MiB;
const FAST = 8 * MiB;
/** Halfway between the two limits: the rate has "moved" once it crosses this. */
const MIDPOINT = (SLOW + FAST) / 2;
/** What the API promises for a speed change to show in the rate. */
const PROMISE_MS = 2000;

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({ progressIntervalMs: 50 });
});

afterAll(async () => {
  await server.stop();
});

async function status(uuid: string): Promise<BackupStatus> {
  return (await server.client.queryBackup({ uuid })).status!;
}

/** Polls the job every 50 ms until `reached` holds; returns how long that took (Infinity if not within `limitMs`). */
async function timeUntil(uuid: string, reached: (status: BackupStatus) => boolean, limitMs: number): Promise<number> {
  const started = performance.now();
  for (;;) {
    const current = await status(uuid);
    expect(current.state).toBe(BackupState.ACTIVE);
    const elapsed = performance.now() - started;
    if (reached(current)) return elapsed;
    if (elapsed > limitMs) return Infinity;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("a speed change mid-job", () => {
  it("shows in the measured rate within 2 seconds, both ways", async () => {
    // A sparse 256 MiB image: reading holes costs little, and the job
    // cannot end during the test at these speeds.
    const image = path.join(server.sourceDir, "sparse.raw");
    const handle = await open(image, "w");
    await handle.truncate(256 * MiB);
    await handle.close();
    const started = await server.client.backup({
      backupFile: "speed.vma",
      devices: [{ name: "drive-scsi0", path: image }],
      speedLimit: BigInt(SLOW),
    });
    const uuid = started.status!.uuid;
    try {
      // Settle at the first limit.
      const settled = await timeUntil(uuid, (current) => Number(current.rate) > SLOW * 0.8, 3000);
      expect(settled).toBeLessThan(3000);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(Number((await status(uuid)).rate)).toBeLessThan(SLOW * 1.25);

      const up = await server.client.setBackupSpeed({ uuid, speedLimit: BigInt(FAST) });
      expect(up.status?.speedLimit).toBe(BigInt(FAST));
      const upMs = await timeUntil(uuid, (current) => Number(current.rate) > MIDPOINT, PROMISE_MS);
      expect(upMs).toBeLessThan(PROMISE_MS);
      // Let it run at the new limit; the rate does not overshoot it.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const fast = Number((await status(uuid)).rate);
      expect(fast).toBeGreaterThan(FAST * 0.75);
      expect(fast).toBeLessThan(FAST * 1.25);

      const down = await server.client.setBackupSpeed({ uuid, speedLimit: BigInt(SLOW) });
      expect(down.status?.speedLimit).toBe(BigInt(SLOW));
      const downMs = await timeUntil(uuid, (current) => Number(current.rate) < MIDPOINT, PROMISE_MS);
      expect(downMs).toBeLessThan(PROMISE_MS);
    } finally {
      await server.client.cancelBackup({ uuid });
    }
  });
});
