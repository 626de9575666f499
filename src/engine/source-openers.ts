// Which code opens which kind of source: the one place a kind of source is
// wired into the engine, with where each keeps its files in the state dir.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Logger } from "pino";
import type { DiskSource } from "../sources/disk-source.js";
import { openConfinedFile, openFileSource } from "../sources/file/file-source.js";
import type { ImageFormat } from "../sources/image/image-format.js";
import { openImageSource } from "../sources/image/image-source.js";
import { sweepLeftoverExports } from "../sources/image/leftover-exports.js";
import { openNbdDevice } from "../sources/nbd/open-nbd-device.js";
import { FleecingJournal } from "../sources/qemu/fleecing-journal.js";
import { openQemuSources, type QemuSourcesOptions, qemuLeftovers } from "../sources/qemu/qemu-sources.js";
import type { SourceConfinement } from "../sources/source-confinement.js";
import { sourceField } from "./device-source.js";
import { QmpMonitorClaims } from "./qmp-monitor-claims.js";
import type { OpenedSources, SourceOpener, SourceOpeners, SourceOpenRequest } from "./source-opener.js";

/** Work dirs of the private qemu-storage-daemons serving images. */
export const IMAGES_DIR_NAME = "images";
/** Unix sockets QEMU's NBD servers listen on for fleecing exports. */
export const RUN_DIR_NAME = "run";
/** Freezes in progress, to be undone after a crash. */
export const FLEECING_JOURNAL_DIR_NAME = "fleecing";

/** What openers may need from the server's settings. */
export interface SourceOpenerContext {
  /** The source roots: where path and image sources may lie. */
  readonly confinement: SourceConfinement;
  readonly stateDir: string;
  /** Where qemu sources keep scratch overlays. */
  readonly scratchDir: string;
  readonly nbdAllow: readonly string[];
  readonly qmpRoots: readonly string[];
  readonly logger: Logger;
}

/** Closes every source; never throws. */
export async function closeAll(sources: readonly DiskSource[]): Promise<void> {
  await Promise.allSettled(sources.map((source) => source.close()));
}

/** Opens each path device as a file or block device, in order; closes those opened on failure. */
function openPathSources(context: SourceOpenerContext): SourceOpener<"path"> {
  return async (request) => {
    const sources: DiskSource[] = [];
    try {
      for (const device of request.devices) {
        sources.push(
          await openFileSource(context.confinement, device.source.path, sourceField(device.source, device.index)),
        );
      }
    } catch (error) {
      await closeAll(sources);
      throw error;
    }
    return { sources, release: async () => undefined } satisfies OpenedSources;
  };
}

/** Opens each image through its own private qemu-storage-daemon. */
function openImageSources(context: SourceOpenerContext): SourceOpener<"image"> {
  const imagesDir = path.join(context.stateDir, IMAGES_DIR_NAME);
  return async (request) => {
    await fs.mkdir(imagesDir, { recursive: true, mode: 0o700 });
    const sources: DiskSource[] = [];
    try {
      for (const device of request.devices) {
        sources.push(
          await openImageSource({
            path: device.source.path,
            // Validation let only known formats through.
            format: device.source.format as ImageFormat,
            field: `devices[${device.index}].image.path`,
            formatField: `devices[${device.index}].image.format`,
            openFile: (file, field) => openConfinedFile(context.confinement, file, field),
            workDir: await fs.mkdtemp(path.join(imagesDir, "job-")),
          }),
        );
      }
    } catch (error) {
      await closeAll(sources);
      throw error;
    }
    return { sources, release: async () => undefined } satisfies OpenedSources;
  };
}

/** Connects to each NBD export (the settings allowing it were checked before). */
function openNbdSources(): SourceOpener<"nbd"> {
  return async (request) => {
    const sources: DiskSource[] = [];
    try {
      for (const device of request.devices) {
        sources.push(await openNbdDevice(device.source.uri, `devices[${device.index}].nbd.uri`));
      }
    } catch (error) {
      await closeAll(sources);
      throw error;
    }
    return { sources, release: async () => undefined } satisfies OpenedSources;
  };
}

/** The devices of one QEMU, in request order, with their positions in the request. */
function byQemu(request: SourceOpenRequest<"qemu">): Map<string, SourceOpenRequest<"qemu">["devices"]> {
  const groups = new Map<string, SourceOpenRequest<"qemu">["devices"][number][]>();
  for (const device of request.devices) {
    const group = groups.get(device.source.qmpSocket) ?? [];
    group.push(device);
    groups.set(device.source.qmpSocket, group);
  }
  return groups;
}

/**
 * Freezes the drives of each QEMU in one transaction per QEMU, each freeze
 * journaled before it starts and forgotten after its teardown.
 */
function openQemuDrives(context: SourceOpenerContext): SourceOpener<"qemu"> {
  const runDir = path.join(context.stateDir, RUN_DIR_NAME);
  const journal = new FleecingJournal(path.join(context.stateDir, FLEECING_JOURNAL_DIR_NAME));
  const monitors = new QmpMonitorClaims();
  return async (request) => {
    const groups = byQemu(request);
    // Before anything is created: a monitor another job holds would not answer until that job ends.
    const claims = await Promise.all(
      [...groups].map(async ([qmpSocket, devices]) => ({
        key: await fs.realpath(qmpSocket).catch(() => qmpSocket),
        qmpSocket,
        field: `devices[${devices[0]?.index ?? 0}].qemu.qmp_socket`,
      })),
    );
    monitors.claim(request.jobId, claims);
    const byPosition = new Map<number, DiskSource>();
    const frozen: { tag: string; qmpSocket: string; release: () => Promise<readonly string[]> }[] = [];
    const release = async (): Promise<void> => {
      for (const freeze of frozen) {
        const problems = await freeze.release();
        if (problems.length > 0) {
          // Kept: the next start of the server undoes what is left (recoverSourceLeftovers).
          context.logger.warn(
            { jobId: request.jobId, qmpSocket: freeze.qmpSocket, tag: freeze.tag, problems },
            "could not fully undo a freeze in QEMU; the next server start retries",
          );
          continue;
        }
        await journal.remove(freeze.tag).catch(() => undefined);
      }
      monitors.release(request.jobId);
    };
    try {
      await fs.mkdir(runDir, { recursive: true, mode: 0o700 });
      await fs.mkdir(context.scratchDir, { recursive: true, mode: 0o700 });
      let group = 0;
      for (const [qmpSocket, devices] of groups) {
        // QEMU node names hold at most 31 characters: 8 hex digits of the job and the QEMU's number.
        const tag = `${request.jobId.replaceAll("-", "").slice(0, 8)}q${group++}`;
        const options: QemuSourcesOptions = {
          qmpSocket,
          drives: devices.map((device) => ({
            drive: device.source.drive,
            name: device.name,
            driveField: `devices[${device.index}].qemu.drive`,
            socketField: `devices[${device.index}].qemu.qmp_socket`,
          })),
          scratchDir: context.scratchDir,
          exportSocketPath: path.join(runDir, `${tag}.sock`),
          tag,
        };
        await journal.record(qemuLeftovers(options));
        let opened: Awaited<ReturnType<typeof openQemuSources>>;
        try {
          opened = await openQemuSources(options);
        } catch (error) {
          // The freeze undid itself.
          await journal.remove(tag).catch(() => undefined);
          throw error;
        }
        frozen.push({ tag, qmpSocket, release: () => opened.release() });
        devices.forEach((device, position) => {
          byPosition.set(device.index, opened.sources[position] as DiskSource);
        });
      }
    } catch (error) {
      await closeAll([...byPosition.values()]);
      await release();
      throw error;
    }
    const sources = request.devices.map((device) => byPosition.get(device.index) as DiskSource);
    return { sources, release } satisfies OpenedSources;
  };
}

/** The openers of a server. */
export function createSourceOpeners(context: SourceOpenerContext): SourceOpeners {
  return {
    path: openPathSources(context),
    image: openImageSources(context),
    nbd: openNbdSources(),
    qemu: openQemuDrives(context),
  };
}

/**
 * Undoes what sources of a crashed server left behind: private image
 * daemons still running, freezes still in place in running QEMUs. Runs at
 * start-up, with the state dir locked. Never throws.
 */
export async function recoverSourceLeftovers(stateDir: string, logger: Logger): Promise<void> {
  try {
    const stopped = await sweepLeftoverExports(path.join(stateDir, IMAGES_DIR_NAME));
    if (stopped > 0) logger.info({ stopped }, "stopped image daemons a crashed server left running");
  } catch (error) {
    logger.warn({ err: error }, "sweeping image daemons left by a crashed server failed");
  }
  const journal = new FleecingJournal(path.join(stateDir, FLEECING_JOURNAL_DIR_NAME));
  try {
    for (const { record, result } of await journal.recoverAll()) {
      const facts = { qmpSocket: record.qmpSocket, tag: record.tag, removed: result.removed };
      if (result.problems.length === 0) logger.info(facts, "undid a freeze a crashed server left in QEMU");
      else
        logger.warn({ ...facts, problems: result.problems }, "could not fully undo a freeze left by a crashed server");
    }
  } catch (error) {
    logger.warn({ err: error }, "undoing freezes left by a crashed server failed");
  }
}
