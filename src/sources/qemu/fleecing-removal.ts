// Removes what a fleecing job put into QEMU and onto disk, in the order QEMU
// needs (exports release the overlay, the job releases the filter above the
// live node, then the overlay can go), best effort: each step runs even if
// an earlier one failed, and every step is checked against QEMU's own view,
// so removing something already gone is not a problem. Shared by teardown,
// the undo of a failed freeze and the cleanup after a daemon crash.

import { rm } from "node:fs/promises";
import { errorMessage, QemuSourceError } from "./errors.js";
import type { QmpClient } from "./qmp-client.js";
import { waitUntil } from "./wait-until.js";

export interface FleecingObjects {
  readonly exportIds: readonly string[];
  readonly jobIds: readonly string[];
  readonly scratchNodes: readonly string[];
  /** Stop QEMU's NBD server (only when this job started it). */
  readonly stopNbdServer: boolean;
}

interface ExportInfo {
  readonly id: string;
}
interface JobInfo {
  readonly id: string;
  readonly status: string;
}
interface NodeInfo {
  readonly "node-name": string;
}

/** Returns what could not be removed (empty when QEMU is as before); never throws. */
export async function removeFleecingObjects(
  client: QmpClient,
  objects: FleecingObjects,
  timeoutMs: number,
): Promise<string[]> {
  const problems: string[] = [];
  let unresponsive = false;
  const step = async (what: string, action: () => Promise<void>): Promise<void> => {
    if (client.closed) return; // QEMU is gone, and with it everything we put there
    if (unresponsive) {
      problems.push(`${what}: skipped, QEMU stopped answering`);
      return;
    }
    try {
      await action();
    } catch (error) {
      if (error instanceof QemuSourceError && error.reason === "QMP_CLOSED") return;
      // A hung QEMU would make every later step wait its own timeout: give up on QMP at once.
      if (error instanceof QemuSourceError && error.reason === "QMP_TIMEOUT") unresponsive = true;
      problems.push(`${what}: ${errorMessage(error)}`);
    }
  };
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(deadline - Date.now(), 1);

  if (objects.exportIds.length > 0) {
    await step("removing the NBD exports", () => removeExports(client, objects.exportIds, left()));
  }
  if (objects.jobIds.length > 0) {
    await step("cancelling the fleecing jobs", () => cancelJobs(client, objects.jobIds, left()));
  }
  if (objects.scratchNodes.length > 0) {
    await step("removing the scratch nodes", () => removeNodes(client, objects.scratchNodes));
  }
  if (objects.stopNbdServer) {
    await step("stopping the NBD server", async () => {
      try {
        await client.execute("nbd-server-stop");
      } catch (error) {
        if (!(error instanceof QemuSourceError && error.reason === "QMP_COMMAND_FAILED")) throw error;
        // "NBD server not running": already stopped.
      }
    });
  }
  return problems;
}

/** Deletes files, ignoring those already gone; returns what could not be deleted. */
export async function removeFiles(paths: readonly string[]): Promise<string[]> {
  const problems: string[] = [];
  for (const path of paths) {
    try {
      await rm(path, { force: true });
    } catch (error) {
      problems.push(`deleting ${path}: ${errorMessage(error)}`);
    }
  }
  return problems;
}

async function removeExports(client: QmpClient, ids: readonly string[], timeoutMs: number): Promise<void> {
  const present = async (): Promise<string[]> => {
    const exports = await client.execute<ExportInfo[]>("query-block-exports");
    return exports.filter((info) => ids.includes(info.id)).map((info) => info.id);
  };
  for (const id of await present()) {
    // hard: drop connected NBD clients now instead of waiting for them to leave.
    await client.execute("block-export-del", { id, mode: "hard" }).catch(() => undefined);
  }
  // Deletion completes asynchronously (BLOCK_EXPORT_DELETED); the overlay stays busy until then.
  if (!(await waitUntil(async () => (await present()).length === 0, timeoutMs))) {
    throw new Error(`exports ${(await present()).join(", ")} still exist after ${timeoutMs} ms`);
  }
}

async function cancelJobs(client: QmpClient, ids: readonly string[], timeoutMs: number): Promise<void> {
  const present = async (): Promise<JobInfo[]> => {
    const jobs = await client.execute<JobInfo[]>("query-jobs");
    return jobs.filter((job) => ids.includes(job.id));
  };
  const waits: Promise<unknown>[] = [];
  for (const job of await present()) {
    if (job.status === "concluded" || job.status === "null") {
      await client.execute("job-dismiss", { id: job.id }).catch(() => undefined);
      continue;
    }
    // Subscribe before cancelling so the event cannot pass unseen.
    const cancelled = client.waitForEvent("BLOCK_JOB_CANCELLED", (event) => event.data.device === job.id, timeoutMs);
    cancelled.catch(() => undefined);
    waits.push(cancelled);
    await client.execute("block-job-cancel", { device: job.id, force: true }).catch(() => undefined);
  }
  await Promise.allSettled(waits);
  // The event may not come (the job had already failed, or ended some other way): QEMU's list decides.
  if (!(await waitUntil(async () => (await present()).length === 0, Math.min(timeoutMs, 2_000)))) {
    const stuck = await present();
    throw new Error(`jobs ${stuck.map((job) => `${job.id} (${job.status})`).join(", ")} did not end`);
  }
}

async function removeNodes(client: QmpClient, nodeNames: readonly string[]): Promise<void> {
  const present = async (): Promise<string[]> => {
    const nodes = await client.execute<NodeInfo[]>("query-named-block-nodes", { flat: true });
    return nodes.map((node) => node["node-name"]).filter((name) => nodeNames.includes(name));
  };
  const failures: string[] = [];
  for (const nodeName of await present()) {
    try {
      await client.execute("blockdev-del", { "node-name": nodeName });
    } catch (error) {
      failures.push(errorMessage(error));
    }
  }
  const stuck = await present();
  if (stuck.length > 0) throw new Error(`nodes ${stuck.join(", ")} still exist: ${failures.join("; ")}`);
}
