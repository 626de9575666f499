// Cleanup after a daemon that died mid-job (kill -9, power loss): finds what
// the job tagged `tag` left in QEMU by the tag in every name, removes it, and
// deletes the scratch files. A QEMU that is gone took its part with it.

import { lstat } from "node:fs/promises";
import { errorMessage, QemuSourceError } from "./errors.js";
import { tagPrefix, validateTag } from "./fleecing-names.js";
import { removeFiles, removeFleecingObjects } from "./fleecing-removal.js";
import { QmpClient } from "./qmp-client.js";

/** What a job record keeps so that its fleecing can be cleaned up after a crash. */
export interface LeftoverRecord {
  readonly qmpSocket: string;
  readonly tag: string;
  readonly scratchFiles: readonly string[];
  /** The NBD server's socket: if it still exists, the server was started for this job and is stopped. */
  readonly exportSocketPath?: string;
}

export interface CleanupOptions {
  readonly connectTimeoutMs?: number;
  readonly commandTimeoutMs?: number;
  /** Waiting for cancelled jobs and deleted exports (default 15 s). */
  readonly removalTimeoutMs?: number;
}

export interface CleanupResult {
  /** False when QEMU could not be reached (gone, or its monitor busy): only files were removed. */
  readonly qemuReached: boolean;
  /** What was found and removed in QEMU. */
  readonly removed: {
    readonly exports: readonly string[];
    readonly jobs: readonly string[];
    readonly nodes: readonly string[];
  };
  readonly nbdServerStopped: boolean;
  /** What could not be removed (empty when all is clean). */
  readonly problems: readonly string[];
}

/** Never throws for QEMU or file trouble; reports it in `problems`. */
export async function cleanupLeftovers(record: LeftoverRecord, options: CleanupOptions = {}): Promise<CleanupResult> {
  validateTag(record.tag);
  const prefix = tagPrefix(record.tag);
  const problems: string[] = [];
  const removed = { exports: [] as string[], jobs: [] as string[], nodes: [] as string[] };
  let qemuReached = false;
  let nbdServerStopped = false;

  let client: QmpClient | undefined;
  try {
    client = await QmpClient.connect(record.qmpSocket, {
      connectTimeoutMs: options.connectTimeoutMs ?? 5_000,
      commandTimeoutMs: options.commandTimeoutMs ?? 10_000,
    });
  } catch (error) {
    // A QEMU that is gone is the normal case after a crash of both; anything else is worth saying.
    if (
      !(
        error instanceof QemuSourceError &&
        error.reason === "QMP_UNREACHABLE" &&
        /ENOENT|ECONNREFUSED/.test(error.message)
      )
    ) {
      problems.push(`QEMU at ${record.qmpSocket} not cleaned up: ${errorMessage(error)}`);
    }
  }
  if (client !== undefined) {
    try {
      qemuReached = true;
      const exports = await client.execute<{ id: string; type: string }[]>("query-block-exports");
      const jobs = await client.execute<{ id: string }[]>("query-jobs");
      const nodes = await client.execute<{ "node-name": string }[]>("query-named-block-nodes", { flat: true });
      removed.exports.push(...exports.map((info) => info.id).filter((id) => id.startsWith(prefix)));
      removed.jobs.push(...jobs.map((job) => job.id).filter((id) => id.startsWith(prefix)));
      removed.nodes.push(...nodes.map((node) => node["node-name"]).filter((name) => name.startsWith(prefix)));
      // Other NBD exports would share the server (QEMU runs one); FUSE or vhost-user exports do not.
      const otherNbdExports = exports.filter((info) => info.type === "nbd" && !info.id.startsWith(prefix)).length;
      const stopNbdServer = otherNbdExports === 0 && (await ourServerSocketExists(record.exportSocketPath));
      problems.push(
        ...(await removeFleecingObjects(
          client,
          { exportIds: removed.exports, jobIds: removed.jobs, scratchNodes: removed.nodes, stopNbdServer },
          options.removalTimeoutMs ?? 15_000,
        )),
      );
      nbdServerStopped = stopNbdServer && !client.closed;
    } catch (error) {
      problems.push(`querying QEMU at ${record.qmpSocket}: ${errorMessage(error)}`);
    } finally {
      client.close();
    }
  }
  const files = [...record.scratchFiles, ...(record.exportSocketPath === undefined ? [] : [record.exportSocketPath])];
  problems.push(...(await removeFiles(files)));
  return { qemuReached, removed, nbdServerStopped, problems };
}

/** QEMU removes its listening socket on nbd-server-stop; one still there means our server still runs (or QEMU died). */
async function ourServerSocketExists(path: string | undefined): Promise<boolean> {
  if (path === undefined) return false;
  try {
    return (await lstat(path)).isSocket();
  } catch {
    return false;
  }
}
