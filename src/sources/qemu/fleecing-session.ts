// The live side of a fleecing job: what freezeDrives hands back. It turns
// QEMU's events about the job's block jobs, exports and drives into failures
// the engine can end the job with, reports how much the scratch overlays hold,
// and tears everything down exactly once.

import { stat } from "node:fs/promises";
import { QemuSourceError } from "./errors.js";
import { tagPrefix } from "./fleecing-names.js";
import { removeFiles, removeFleecingObjects } from "./fleecing-removal.js";
import type { LeftoverRecord } from "./leftovers.js";
import type { QmpClient, QmpEvent } from "./qmp-client.js";

export interface FleecingTimeouts {
  /** Connecting to QMP, greeting and capabilities (default 5 s). */
  readonly connectMs: number;
  /** Each QMP command (default 10 s). */
  readonly commandMs: number;
  /** qemu-img create of one scratch overlay (default 30 s). */
  readonly scratchCreateMs: number;
  /** The whole teardown, including waiting for cancelled jobs and deleted exports (default 15 s). */
  readonly teardownMs: number;
}

export interface FrozenDrive {
  /** The drive as the caller named it. */
  readonly drive: string;
  /** What the copy-before-write job copies from: the BlockBackend name, or the node name. */
  readonly device: string;
  /** The live node the overlay is backed by. */
  readonly liveNode: string;
  /** Guest-visible size in bytes. */
  readonly size: number;
  /** NBD export name to read the point-in-time view from, on `socketPath`. */
  readonly exportName: string;
  readonly socketPath: string;
  readonly scratchNode: string;
  readonly scratchFile: string;
  readonly jobId: string;
}

export type FleecingFailureKind =
  /** The QMP connection closed: QEMU exited (or was killed). The exports are gone. */
  | "QEMU_GONE"
  /** A fleecing job failed or ended by itself: the view of `drive` is no longer a point in time. */
  | "BLOCK_JOB_FAILED"
  /** An export disappeared without our teardown (someone removed it). */
  | "EXPORT_GONE"
  /**
   * A write to a frozen drive failed (BLOCK_IO_ERROR), most likely because the
   * scratch overlay could not grow: with blockdev-backup QEMU fails the guest's
   * write rather than the snapshot, so end the job and tear down at once.
   */
  | "GUEST_WRITE_FAILED";

export interface FleecingFailure {
  readonly kind: FleecingFailureKind;
  /** The drive concerned, as the caller named it; absent when all are (QEMU_GONE). */
  readonly drive?: string;
  readonly message: string;
}

export interface TeardownResult {
  /** What could not be removed; empty when QEMU and the scratch dir are as before. */
  readonly problems: readonly string[];
}

export interface FleecingSession {
  readonly tag: string;
  readonly drives: readonly FrozenDrive[];
  /** What cleanupLeftovers needs if the daemon dies before teardown (also computable beforehand: plannedLeftovers). */
  readonly leftovers: LeftoverRecord;
  /**
   * Bytes the drive's scratch overlay has grown by since the freeze (its
   * allocated size on disk less that of the empty overlay): the old data of
   * what the guest overwrote, plus the qcow2 tables that grow with it. 0 after teardown.
   */
  scratchBytes(drive: string): Promise<number>;
  /** Calls `listener` for each failure (at once for one that already happened); returns an unsubscribe function. */
  onFailure(listener: (failure: FleecingFailure) => void): () => void;
  /**
   * Rejects when the freeze is broken: a failure seen, or one of our block
   * jobs no longer running. Any event QEMU sent before this call's reply has
   * been handled when it resolves.
   */
  confirmIntact(): Promise<void>;
  /** Removes everything freezeDrives created; best effort, never throws, same promise on every call. */
  teardown(): Promise<TeardownResult>;
}

export class ActiveSession implements FleecingSession {
  readonly tag: string;
  readonly drives: readonly FrozenDrive[];
  readonly leftovers: LeftoverRecord;
  private readonly client: QmpClient;
  private readonly timeouts: FleecingTimeouts;
  private readonly emptyScratchBytes: ReadonlyMap<string, number>;
  private readonly failures: FleecingFailure[] = [];
  private readonly listeners = new Set<(failure: FleecingFailure) => void>();
  private tearingDown: Promise<TeardownResult> | null = null;

  constructor(
    client: QmpClient,
    tag: string,
    drives: readonly FrozenDrive[],
    leftovers: LeftoverRecord,
    timeouts: FleecingTimeouts,
    emptyScratchBytes: ReadonlyMap<string, number>,
  ) {
    this.emptyScratchBytes = emptyScratchBytes;
    this.client = client;
    this.tag = tag;
    this.drives = drives;
    this.leftovers = leftovers;
    this.timeouts = timeouts;
    client.on("event", (event) => this.watch(event));
    client.on("close", (error) => {
      if (this.tearingDown === null) {
        this.fail({
          kind: "QEMU_GONE",
          message: `lost QEMU (${error?.message ?? "connection closed"}): the point-in-time views are gone`,
        });
      }
    });
  }

  async scratchBytes(drive: string): Promise<number> {
    const frozen = this.drives.find((candidate) => candidate.drive === drive);
    if (frozen === undefined)
      throw new QemuSourceError("DRIVE_NOT_FOUND", `drive ${drive} is not part of this fleecing session`, { drive });
    if (this.tearingDown !== null) return 0;
    const now = await allocatedBytes(frozen.scratchFile);
    return Math.max(now - (this.emptyScratchBytes.get(drive) ?? 0), 0);
  }

  onFailure(listener: (failure: FleecingFailure) => void): () => void {
    this.listeners.add(listener);
    for (const failure of this.failures) listener(failure);
    return () => this.listeners.delete(listener);
  }

  async confirmIntact(): Promise<void> {
    const jobs = await this.client.execute<{ device: string; status?: string }[]>("query-block-jobs");
    const failure = this.failures[0];
    if (failure !== undefined) throw new QemuSourceError("FLEECING_FAILED", failure.message, { drive: failure.drive });
    for (const drive of this.drives) {
      const job = jobs.find((candidate) => candidate.device === drive.jobId);
      if (job === undefined || (job.status !== undefined && job.status !== "running" && job.status !== "ready")) {
        const state = job === undefined ? "is gone" : `is ${job.status}`;
        throw new QemuSourceError(
          "FLEECING_FAILED",
          `the copy-before-write job of ${drive.drive} ${state}: its view is no longer a point in time`,
          { drive: drive.drive },
        );
      }
    }
  }

  teardown(): Promise<TeardownResult> {
    this.tearingDown ??= this.removeAll();
    return this.tearingDown;
  }

  private async removeAll(): Promise<TeardownResult> {
    const problems = await removeFleecingObjects(
      this.client,
      {
        exportIds: this.drives.map((drive) => drive.exportName),
        jobIds: this.drives.map((drive) => drive.jobId),
        scratchNodes: this.drives.map((drive) => drive.scratchNode),
        stopNbdServer: true,
      },
      this.timeouts.teardownMs,
    );
    this.client.close();
    // The export socket tells cleanupLeftovers that QEMU's NBD server is ours to stop: it stays
    // while anything in QEMU may be left (the server among it), so a later cleanup can finish.
    const files = this.drives.map((drive) => drive.scratchFile);
    if (problems.length === 0) files.push(this.drives[0]!.socketPath);
    problems.push(...(await removeFiles(files)));
    return { problems };
  }

  /** Maps QEMU's events about our jobs and exports to failures, unless we are the ones removing them. */
  private watch(event: QmpEvent): void {
    if (this.tearingDown !== null) return;
    if (event.event === "BLOCK_IO_ERROR") {
      this.watchIoError(event);
      return;
    }
    const id =
      typeof event.data.device === "string"
        ? event.data.device
        : typeof event.data.id === "string"
          ? event.data.id
          : "";
    if (!id.startsWith(tagPrefix(this.tag))) return;
    const byJob = this.drives.find((drive) => drive.jobId === id);
    const byExport = this.drives.find((drive) => drive.exportName === id);
    switch (event.event) {
      case "BLOCK_JOB_ERROR":
      case "BLOCK_JOB_CANCELLED":
      case "BLOCK_JOB_COMPLETED":
        if (byJob === undefined) return;
        this.fail({
          kind: "BLOCK_JOB_FAILED",
          drive: byJob.drive,
          message: `the copy-before-write job of ${byJob.drive} ended (${event.event}${describeJobError(event)}): its view is no longer a point in time`,
        });
        return;
      case "BLOCK_EXPORT_DELETED":
        if (byExport === undefined) return;
        this.fail({
          kind: "EXPORT_GONE",
          drive: byExport.drive,
          message: `the NBD export of ${byExport.drive} was removed`,
        });
        return;
      default:
        return;
    }
  }

  /** BLOCK_IO_ERROR names the device (BlockBackend, empty for a node) and the node where the error happened. */
  private watchIoError(event: QmpEvent): void {
    const { device, "node-name": nodeName, operation, nospace, reason } = event.data;
    const drive = this.drives.find((candidate) => candidate.device === device || candidate.liveNode === nodeName);
    if (drive === undefined || operation !== "write") return;
    const why = nospace === true ? "no space left (is the scratch directory full?)" : String(reason ?? "I/O error");
    this.fail({
      kind: "GUEST_WRITE_FAILED",
      drive: drive.drive,
      message: `a guest write to ${drive.drive} failed during the backup: ${why}`,
    });
  }

  private fail(failure: FleecingFailure): void {
    this.failures.push(failure);
    for (const listener of this.listeners) listener(failure);
  }
}

function describeJobError(event: QmpEvent): string {
  const parts = [event.data.operation, event.data.action, event.data.error].filter(
    (part): part is string => typeof part === "string",
  );
  return parts.length > 0 ? `: ${parts.join(", ")}` : "";
}

/** Bytes a file occupies on disk (st_blocks counts 512-byte units whatever the block size); 0 when it is gone. */
export async function allocatedBytes(path: string): Promise<number> {
  try {
    return (await stat(path)).blocks * 512;
  } catch {
    return 0;
  }
}
