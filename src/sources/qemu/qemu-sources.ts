// The drives of one running QEMU as DiskSources: frozen together at one
// instant (image fleecing), each read from its point-in-time export with our
// NBD client. A failure of the freeze (QEMU gone, the copy-before-write job
// ended, a guest write failed) makes every later read fail, and confirm()
// after the last read proves no such failure happened before it: QMP
// delivers events in order, so a reply to a command sent after the reads
// comes after any event about them.
import { realpath } from "node:fs/promises";
import type { DiskSource, SourceExtent } from "../disk-source.js";
import { type NbdSource, type NbdSourceOptions, openNbdSource } from "../nbd/index.js";
import { SourceRefusal, type SourceRefusalCode } from "../source-refusal.js";
import { QemuSourceError } from "./errors.js";
import { freezeDrives, type FreezeOptions, plannedLeftovers } from "./fleecing.js";
import type { FleecingFailure, FleecingSession, FrozenDrive } from "./fleecing-session.js";
import type { LeftoverRecord } from "./leftovers.js";

export interface QemuDriveRequest {
  /** BlockBackend name (drive-scsi0) or node name. */
  readonly drive: string;
  /** The device's name in the archive, for messages. */
  readonly name: string;
  /** The request fields of this device's drive and QMP socket. */
  readonly driveField: string;
  readonly socketField: string;
}

export interface QemuSourcesOptions extends Omit<FreezeOptions, "drives"> {
  readonly drives: readonly QemuDriveRequest[];
  readonly nbd?: NbdSourceOptions;
}

export interface OpenedQemuSources {
  /** In the order of `drives`. */
  readonly sources: readonly DiskSource[];
  /**
   * Tears the freeze down (after the sources were closed); never throws.
   * Resolves with what could not be undone (empty when QEMU is as before).
   */
  release(): Promise<readonly string[]>;
}

const REFUSAL_CODES: Partial<Record<QemuSourceError["reason"], SourceRefusalCode>> = {
  DRIVE_NOT_FOUND: "not-found",
  INVALID_OPTIONS: "invalid-argument",
};

/** What the client gets when the freeze fails: the reason of the QEMU side, the field at fault. */
function refusal(error: unknown, options: QemuSourcesOptions): unknown {
  if (!(error instanceof QemuSourceError)) return error;
  const first = options.drives[0];
  // A drive named twice is at fault where it is named the second time.
  const byDrive = options.drives.findLast((request) => request.drive === error.drive);
  const field =
    error.reason === "DRIVE_NOT_FOUND" || (error.reason === "INVALID_OPTIONS" && byDrive !== undefined)
      ? (byDrive?.driveField ?? first?.driveField ?? "devices")
      : (first?.socketField ?? "devices");
  const code = REFUSAL_CODES[error.reason] ?? "failed-precondition";
  return new SourceRefusal(code, error.reason, `${field}: ${error.message}`, field, { cause: error });
}

class QemuDriveSource implements DiskSource {
  readonly kind = "qemu" as const;
  readonly size: number;
  readonly lockKey: string;
  readonly location: string;

  constructor(
    private readonly session: FleecingSession,
    private readonly frozen: FrozenDrive,
    private readonly reader: NbdSource,
    private readonly failure: () => FleecingFailure | undefined,
    qmpSocketKey: string,
    qmpSocket: string,
  ) {
    this.size = reader.size;
    this.lockKey = `qemu:${qmpSocketKey}:${frozen.liveNode}`;
    this.location = `${qmpSocket}:${frozen.drive}`;
  }

  private throwIfBroken(): void {
    const failure = this.failure();
    if (failure !== undefined) throw new Error(`the point in time of ${this.frozen.drive} is lost: ${failure.message}`);
  }

  async read(buffer: Uint8Array, bufferOffset: number, length: number, position: number): Promise<void> {
    this.throwIfBroken();
    await this.reader.read(buffer, bufferOffset, length, position);
    this.throwIfBroken();
  }

  async mapExtents(offset: number, length: number): Promise<readonly SourceExtent[]> {
    this.throwIfBroken();
    return this.reader.mapExtents(offset, length);
  }

  scratchBytes(): Promise<number> {
    return this.session.scratchBytes(this.frozen.drive);
  }

  async confirm(): Promise<void> {
    await this.session.confirmIntact();
    this.throwIfBroken();
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}

/** What to persist before opening, so that a crash at any step can be cleaned up. */
export function qemuLeftovers(options: QemuSourcesOptions): LeftoverRecord {
  return plannedLeftovers({ ...options, drives: options.drives.map(({ drive }) => ({ drive })) });
}

/** Freezes the drives and connects to their exports; nothing stays frozen on failure. */
export async function openQemuSources(options: QemuSourcesOptions): Promise<OpenedQemuSources> {
  let session: FleecingSession;
  try {
    session = await freezeDrives({ ...options, drives: options.drives.map(({ drive }) => ({ drive })) });
  } catch (error) {
    throw refusal(error, options);
  }
  let failure: FleecingFailure | undefined;
  session.onFailure((happened) => {
    failure ??= happened;
  });
  const readers: NbdSource[] = [];
  try {
    const socketKey = await realpath(options.qmpSocket).catch(() => options.qmpSocket);
    const sources = [];
    for (const frozen of session.drives) {
      const address = { transport: "unix", socketPath: frozen.socketPath, exportName: frozen.exportName } as const;
      const reader = await openNbdSource(address, options.nbd);
      readers.push(reader);
      sources.push(new QemuDriveSource(session, frozen, reader, () => failure, socketKey, options.qmpSocket));
    }
    return {
      sources,
      release: async () => (await session.teardown()).problems,
    };
  } catch (error) {
    await Promise.allSettled(readers.map((reader) => reader.close()));
    await session.teardown();
    throw error;
  }
}
