// Which active job reads which device and writes which archive. Jobs may
// run side by side only when they share neither. Acquisition is synchronous
// and all-or-nothing, so two requests racing for one device cannot both win.
import { EngineError } from "./errors.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";

export interface DeviceLockRequest {
  /** The source's identity (SourceDevice.lockKey). */
  readonly key: string;
  /** Request field, e.g. "devices[1].path", for the error. */
  readonly field: string;
  /** The path as the client gave it, for the error. */
  readonly path: string;
}

export interface LockRequest {
  /** The job that will hold the locks. */
  readonly owner: string;
  /** Final archive path. */
  readonly archivePath: string;
  readonly devices: readonly DeviceLockRequest[];
}

interface Held {
  readonly archivePath: string;
  readonly deviceKeys: readonly string[];
}

export class DeviceLocks {
  private readonly deviceOwners = new Map<string, string>();
  private readonly archiveOwners = new Map<string, string>();
  private readonly held = new Map<string, Held>();

  /** Takes every lock in `request`, or throws EngineError and takes none. */
  acquire(request: LockRequest): void {
    const archiveOwner = this.archiveOwners.get(request.archivePath);
    if (archiveOwner !== undefined) {
      throw new EngineError(
        "already-exists",
        REASON.BACKUP_FILE_IN_USE,
        `backup_file: ${request.archivePath} is being written by job ${archiveOwner}`,
        "backup_file",
        { job_uuid: archiveOwner },
      );
    }
    for (const device of request.devices) {
      const owner = this.deviceOwners.get(device.key);
      if (owner !== undefined) {
        throw new EngineError(
          "failed-precondition",
          REASON.DEVICE_IN_USE,
          `${device.field}: ${quote(device.path)} is being backed up by job ${owner}`,
          device.field,
          { job_uuid: owner },
        );
      }
    }
    if (this.held.has(request.owner)) throw new Error(`job ${request.owner} already holds locks`);

    this.archiveOwners.set(request.archivePath, request.owner);
    for (const device of request.devices) this.deviceOwners.set(device.key, request.owner);
    this.held.set(request.owner, {
      archivePath: request.archivePath,
      deviceKeys: request.devices.map((device) => device.key),
    });
  }

  /** Releases everything `owner` holds; nothing happens when it holds nothing. */
  release(owner: string): void {
    const held = this.held.get(owner);
    if (held === undefined) return;
    this.held.delete(owner);
    this.archiveOwners.delete(held.archivePath);
    for (const key of held.deviceKeys) this.deviceOwners.delete(key);
  }

  /** Number of jobs holding locks. */
  get size(): number {
    return this.held.size;
  }
}
