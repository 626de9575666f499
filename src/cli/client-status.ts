// Facts the client commands derive from a BackupStatus message.
import { durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { BackupState, type BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";

/** "ACTIVE", "DONE", "ERROR", "CANCELLED" (the proto name without its prefix). */
export function stateName(state: BackupState): string {
  return BackupState[state] ?? `STATE_${state}`;
}

/** True once the job has ended and its status will not change again. */
export function isTerminal(state: BackupState): boolean {
  return state === BackupState.DONE || state === BackupState.ERROR || state === BackupState.CANCELLED;
}

/** Milliseconds the job ran, up to `now` while it is active. */
export function elapsedMs(status: BackupStatus, now: Date): number {
  if (status.startTime === undefined) return 0;
  const end = status.endTime === undefined ? now.getTime() : timestampMs(status.endTime);
  return Math.max(0, end - timestampMs(status.startTime));
}

/**
 * Average source bytes per second over the job's run (up to `now` while it
 * runs); 0 before any time has passed. For a finished job, whose current
 * rate the server reports as 0, this is the figure worth showing.
 */
export function averageRate(status: BackupStatus, now: Date): number {
  const elapsed = elapsedMs(status, now);
  return elapsed > 0 ? (Number(status.transferredBytes) * 1000) / elapsed : 0;
}

/** The server's estimate of the time left, in milliseconds; undefined when it has none. */
export function etaMs(status: BackupStatus): number | undefined {
  return status.eta === undefined ? undefined : durationMs(status.eta);
}

/** The status a response must carry (Backup, SetBackupSpeed); throws when a server leaves it out. */
export function requireStatus(status: BackupStatus | undefined, rpc: string): BackupStatus {
  if (status === undefined) throw new Error(`the server's ${rpc} response carries no status`);
  return status;
}
