// Follows jobs over WatchBackup and turns how they ended into an exit code.
import { BackupState, type BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupClient } from "./client-connection.js";
import { EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK } from "./exit-codes.js";
import type { StatusRenderer } from "./client-render.js";
import { isTerminal } from "./client-status.js";

export interface WatchOptions {
  /** The job to follow; "" follows every job, including jobs started later. */
  readonly uuid: string;
  readonly renderer: StatusRenderer;
  /** Aborting ends the watch (not the jobs). */
  readonly signal: AbortSignal;
}

/**
 * Shows every update until the stream ends or `signal` aborts. Returns the
 * exit code: for one job 0 on DONE, 1 on ERROR or CANCELLED; for every job 0
 * when the server ends the stream; 130 when interrupted.
 */
export async function watchBackups(client: BackupClient, options: WatchOptions): Promise<number> {
  let last: BackupStatus | undefined;
  try {
    for await (const { status } of client.watchBackup({ uuid: options.uuid }, { signal: options.signal })) {
      if (status === undefined) continue;
      last = status;
      options.renderer.update(status);
    }
  } catch (error) {
    // Aborting cancels the call, which surfaces here as status CANCELLED.
    if (options.signal.aborted) return EXIT_INTERRUPTED;
    throw error;
  } finally {
    options.renderer.stop();
  }
  if (options.signal.aborted) return EXIT_INTERRUPTED;
  if (options.uuid === "") return EXIT_OK;
  if (last === undefined || !isTerminal(last.state)) {
    throw new Error(`the server ended the watch before job ${options.uuid} finished`);
  }
  return last.state === BackupState.DONE ? EXIT_OK : EXIT_FAILURE;
}

/**
 * Runs `body` with a signal that aborts on Ctrl-C. While it runs, SIGINT no
 * longer kills the process, so the watch can restore the terminal and say
 * that the jobs go on.
 */
export async function untilInterrupted<T>(body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onInterrupt = (): void => controller.abort();
  process.once("SIGINT", onInterrupt);
  try {
    return await body(controller.signal);
  } finally {
    process.removeListener("SIGINT", onInterrupt);
  }
}
