// Image fleecing of a running QEMU: a point-in-time view of some of its
// drives, all frozen at one instant, each readable as an NBD export while the
// guest keeps writing. The scheme of QEMU's "image fleecing" and of libvirt's
// pull-mode backup:
//
//   guest ─► [copy-before-write filter] ─► live node ◄─backing─ [scratch qcow2] ◄─ NBD export
//                       └──── old data, before each guest write ───┘
//
// blockdev-backup sync=none installs the filter; the scratch overlay reads
// through to the live node where the guest has not written since, and holds
// the old data where it has.

import { stat } from "node:fs/promises";
import { resolveDrives } from "./drive-resolver.js";
import { errorMessage, isQmpFailure, QemuSourceError } from "./errors.js";
import { fleecingNames, MAX_FLEECING_DRIVES, tagPrefix, validateTag } from "./fleecing-names.js";
import { removeFiles, removeFleecingObjects } from "./fleecing-removal.js";
import type { LeftoverRecord } from "./leftovers.js";
import { QmpClient, type QmpEvent } from "./qmp-client.js";
import { claimScratchFile, createScratchImage } from "./scratch-image.js";

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

export interface FreezeOptions {
  /** The running QEMU's QMP socket. */
  readonly qmpSocket: string;
  /** A BlockBackend name (`drive-scsi0`) or a node name per drive. */
  readonly drives: readonly { readonly drive: string }[];
  /** Where the scratch overlays go; QEMU must be able to read and write files there. */
  readonly scratchDir: string;
  /** The unix socket QEMU's NBD server listens on; put it in a directory only the daemon can reach. */
  readonly exportSocketPath: string;
  /** Unique per job, 1-12 letters or digits (e.g. the first 8 hex digits of the job uuid); in every name. */
  readonly tag: string;
  readonly timeouts?: Partial<FleecingTimeouts>;
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
  /** Allocated bytes of the drive's scratch overlay: what the guest overwrote since the freeze, plus qcow2 metadata. */
  scratchBytes(drive: string): Promise<number>;
  /** Calls `listener` for each failure (at once for one that already happened); returns an unsubscribe function. */
  onFailure(listener: (failure: FleecingFailure) => void): () => void;
  /** Removes everything freezeDrives created; best effort, never throws, same promise on every call. */
  teardown(): Promise<TeardownResult>;
}

const DEFAULT_TIMEOUTS: FleecingTimeouts = {
  connectMs: 5_000,
  commandMs: 10_000,
  scratchCreateMs: 30_000,
  teardownMs: 15_000,
};

/** The record to persist before freezeDrives runs, so that a crash at any step can be cleaned up. */
export function plannedLeftovers(options: FreezeOptions): LeftoverRecord {
  validateTag(options.tag);
  return {
    qmpSocket: options.qmpSocket,
    tag: options.tag,
    scratchFiles: options.drives.map((_, index) => fleecingNames(options.tag, options.scratchDir, index).scratchFile),
    exportSocketPath: options.exportSocketPath,
  };
}

/**
 * Freezes all `drives` at one instant and exports their point-in-time views.
 * On failure undoes what it did and rejects with a QemuSourceError
 * (QMP_UNREACHABLE, DRIVE_NOT_FOUND, NBD_SERVER_BUSY, SCRATCH_CREATE_FAILED,
 * FLEECING_FAILED, INVALID_OPTIONS, QMP_*).
 */
export async function freezeDrives(options: FreezeOptions): Promise<FleecingSession> {
  const timeouts: FleecingTimeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const leftovers = plannedLeftovers(options);
  validateDriveList(options.drives.map((entry) => entry.drive));

  const client = await QmpClient.connect(options.qmpSocket, {
    connectTimeoutMs: timeouts.connectMs,
    commandTimeoutMs: timeouts.commandMs,
  });
  const done = {
    serverStarted: false,
    files: [] as string[],
    nodes: [] as string[],
    jobs: [] as string[],
    exports: [] as string[],
  };
  try {
    const resolved = await resolveDrives(
      client,
      options.drives.map((entry) => entry.drive),
    );
    const liveNodes = new Set(resolved.map((drive) => drive.nodeName));
    if (liveNodes.size !== resolved.length) {
      throw new QemuSourceError("INVALID_OPTIONS", "two of the drives name the same QEMU node; name each drive once");
    }

    // First what can fail for reasons outside our control, before anything touches the guest's I/O path.
    await startNbdServer(client, options.exportSocketPath);
    done.serverStarted = true;

    const frozen: FrozenDrive[] = resolved.map((drive, index) => {
      const names = fleecingNames(options.tag, options.scratchDir, index);
      return {
        drive: drive.drive,
        device: drive.device,
        liveNode: drive.nodeName,
        size: drive.size,
        exportName: names.exportId,
        socketPath: options.exportSocketPath,
        scratchNode: names.scratchNode,
        scratchFile: names.scratchFile,
        jobId: names.jobId,
      };
    });

    for (const drive of frozen) {
      await claimScratchFile(drive.scratchFile, drive.drive);
      done.files.push(drive.scratchFile);
      await createScratchImage(drive.scratchFile, drive.size, timeouts.scratchCreateMs, drive.drive);
      await attachScratch(client, drive);
      done.nodes.push(drive.scratchNode);
    }

    // One transaction: every drive's copy-before-write starts at the same instant.
    await runStep("FLEECING_FAILED", "starting the copy-before-write jobs", () =>
      client.execute("transaction", {
        actions: resolved.map((drive, index) => ({
          type: "blockdev-backup",
          data: {
            device: drive.device,
            target: frozen[index]!.scratchNode,
            sync: "none",
            "job-id": frozen[index]!.jobId,
          },
        })),
      }),
    );
    done.jobs.push(...frozen.map((drive) => drive.jobId));

    for (const drive of frozen) {
      await runStep("FLEECING_FAILED", `exporting the point-in-time view of ${drive.drive}`, () =>
        client.execute("block-export-add", {
          type: "nbd",
          id: drive.exportName,
          "node-name": drive.scratchNode,
          name: drive.exportName,
          writable: false,
        }),
      );
      done.exports.push(drive.exportName);
    }
    return new ActiveSession(client, options.tag, frozen, leftovers, timeouts);
  } catch (error) {
    const objects = {
      exportIds: done.exports,
      jobIds: done.jobs,
      scratchNodes: done.nodes,
      stopNbdServer: done.serverStarted,
    };
    await removeFleecingObjects(client, objects, timeouts.teardownMs);
    await removeFiles(done.files);
    client.close();
    throw error;
  }
}

function validateDriveList(drives: readonly string[]): void {
  if (drives.length === 0) throw new QemuSourceError("INVALID_OPTIONS", "name at least one drive to freeze");
  if (drives.length > MAX_FLEECING_DRIVES) {
    throw new QemuSourceError("INVALID_OPTIONS", `at most ${MAX_FLEECING_DRIVES} drives can be frozen in one job`);
  }
  const seen = new Set<string>();
  for (const drive of drives) {
    if (drive === "") throw new QemuSourceError("INVALID_OPTIONS", "a drive name is empty");
    if (seen.has(drive)) throw new QemuSourceError("INVALID_OPTIONS", `drive ${drive} is named twice`, { drive });
    seen.add(drive);
  }
}

async function startNbdServer(client: QmpClient, socketPath: string): Promise<void> {
  try {
    await client.execute("nbd-server-start", { addr: { type: "unix", data: { path: socketPath } } });
  } catch (error) {
    if (isQmpFailure(error, /already running/i)) {
      throw new QemuSourceError(
        "NBD_SERVER_BUSY",
        "QEMU already runs an NBD server (a migration or another backup uses it; QEMU runs one at a time): try again when it has finished",
        { qmpClass: error.qmpClass, qmpDesc: error.qmpDesc, cause: error },
      );
    }
    throw wrap("FLEECING_FAILED", `starting QEMU's NBD server on ${socketPath}`, error);
  }
}

async function attachScratch(client: QmpClient, drive: FrozenDrive): Promise<void> {
  await runStep(
    "SCRATCH_CREATE_FAILED",
    `attaching the scratch overlay ${drive.scratchFile} of ${drive.drive}`,
    () =>
      client.execute("blockdev-add", {
        driver: "qcow2",
        "node-name": drive.scratchNode,
        file: { driver: "file", filename: drive.scratchFile },
        backing: drive.liveNode,
      }),
    drive.drive,
  );
}

async function runStep<T>(
  reason: "FLEECING_FAILED" | "SCRATCH_CREATE_FAILED",
  what: string,
  action: () => Promise<T>,
  drive?: string,
): Promise<T> {
  try {
    return await action();
  } catch (error) {
    throw wrap(reason, what, error, drive);
  }
}

/** Keeps connection-level reasons (QEMU gone, timeout) and gives QEMU's refusals the step's reason. */
function wrap(
  reason: "FLEECING_FAILED" | "SCRATCH_CREATE_FAILED",
  what: string,
  error: unknown,
  drive?: string,
): QemuSourceError {
  if (error instanceof QemuSourceError && error.reason !== "QMP_COMMAND_FAILED") return error;
  const qmp = error instanceof QemuSourceError ? error : undefined;
  return new QemuSourceError(reason, `${what}: ${errorMessage(error)}`, {
    qmpClass: qmp?.qmpClass,
    qmpDesc: qmp?.qmpDesc,
    drive,
    cause: error,
  });
}

class ActiveSession implements FleecingSession {
  readonly tag: string;
  readonly drives: readonly FrozenDrive[];
  readonly leftovers: LeftoverRecord;
  private readonly client: QmpClient;
  private readonly timeouts: FleecingTimeouts;
  private readonly failures: FleecingFailure[] = [];
  private readonly listeners = new Set<(failure: FleecingFailure) => void>();
  private tearingDown: Promise<TeardownResult> | null = null;

  constructor(
    client: QmpClient,
    tag: string,
    drives: readonly FrozenDrive[],
    leftovers: LeftoverRecord,
    timeouts: FleecingTimeouts,
  ) {
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
    try {
      const info = await stat(frozen.scratchFile);
      return info.blocks * 512;
    } catch {
      return 0; // removed by teardown
    }
  }

  onFailure(listener: (failure: FleecingFailure) => void): () => void {
    this.listeners.add(listener);
    for (const failure of this.failures) listener(failure);
    return () => this.listeners.delete(listener);
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
    problems.push(
      ...(await removeFiles([...this.drives.map((drive) => drive.scratchFile), this.drives[0]!.socketPath])),
    );
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
