// Shared steps of the live-VM server tests: qemu devices of a request,
// following a job to its end, extracting its archive with our reader, and
// what a finished job must leave behind in the state dir.
import { readdir, readFile } from "node:fs/promises";
import * as path from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { BackupStatus, DeviceSchema } from "../../gen/vmabackup/v1/backup_pb.js";
import { extractArchive } from "../../src/vma/extract-archive.js";
import { openArchive } from "../../src/vma/open-archive.js";
import type { BackupClient } from "./test-server.js";

export type Device = MessageInitShape<typeof DeviceSchema>;

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A device read from `drive` of the QEMU whose monitor is `qmpSocket`. */
export function qemuDevice(name: string, qmpSocket: string, drive: string): Device {
  return { name, source: { case: "qemu", value: { qmpSocket, drive } } };
}

/** Every status of a job from now to its end (the last one is terminal). */
export async function followJob(client: BackupClient, uuid: string): Promise<BackupStatus[]> {
  const seen: BackupStatus[] = [];
  for await (const message of client.watchBackup({ uuid })) {
    if (message.status !== undefined) seen.push(message.status);
  }
  return seen;
}

/** Extracts every disk of an archive with our reader; returns name → bytes. */
export async function extractDisks(archive: string, dir: string): Promise<Map<string, Buffer>> {
  const result = await extractArchive((await openArchive(archive)).chunks, {
    dir,
    sparse: false,
    allowIncomplete: false,
  });
  const disks = new Map<string, Buffer>();
  for (const file of result.files) {
    const name = path
      .basename(file)
      .replace(/^disk-/, "")
      .replace(/\.raw$/, "");
    disks.set(name, await readFile(file));
  }
  return disks;
}

/** The files in `dir`, or none when it does not exist. */
export async function filesIn(dir: string): Promise<string[]> {
  return readdir(dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return [];
    throw error;
  });
}

/** Scratch overlays (in the default --scratch-dir unless given) and journal records of a server's qemu sources. */
export async function sourceLeftovers(
  stateDir: string,
  scratchDir = path.join(stateDir, "scratch"),
): Promise<{ scratch: string[]; journal: string[] }> {
  return {
    scratch: await filesIn(scratchDir),
    journal: await filesIn(path.join(stateDir, "fleecing")),
  };
}
