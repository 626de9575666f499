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

import { resolveDrives } from "./drive-resolver.js";
import { errorMessage, isQmpFailure, QemuSourceError } from "./errors.js";
import { fleecingNames, MAX_FLEECING_DRIVES, validateTag } from "./fleecing-names.js";
import { removeFiles, removeFleecingObjects } from "./fleecing-removal.js";
import {
  ActiveSession,
  allocatedBytes,
  type FleecingSession,
  type FleecingTimeouts,
  type FrozenDrive,
} from "./fleecing-session.js";
import type { LeftoverRecord } from "./leftovers.js";
import { QmpClient } from "./qmp-client.js";
import { claimScratchFile, createScratchImage } from "./scratch-image.js";

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
    for (const [index, drive] of resolved.entries()) {
      const earlier = resolved.slice(0, index).find((other) => other.nodeName === drive.nodeName);
      if (earlier !== undefined) {
        throw new QemuSourceError(
          "INVALID_OPTIONS",
          `drive ${drive.drive} is the QEMU node ${drive.nodeName}, as is drive ${earlier.drive}; name each drive once`,
          { drive: drive.drive },
        );
      }
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

    const emptyScratchBytes = new Map<string, number>();
    for (const drive of frozen) {
      await claimScratchFile(drive.scratchFile, drive.drive);
      done.files.push(drive.scratchFile);
      await createScratchImage(drive.scratchFile, drive.size, timeouts.scratchCreateMs, drive.drive);
      await attachScratch(client, drive);
      done.nodes.push(drive.scratchNode);
      emptyScratchBytes.set(drive.drive, await allocatedBytes(drive.scratchFile));
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
    return new ActiveSession(client, options.tag, frozen, leftovers, timeouts, emptyScratchBytes);
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
