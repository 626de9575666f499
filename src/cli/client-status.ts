// Facts the client commands derive from a BackupStatus message.
import { timestampMs } from "@bufbuild/protobuf/wkt";
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

/** Average source bytes per second since the job started; 0 before any time has passed. */
export function averageRate(status: BackupStatus, now: Date): number {
  const elapsed = elapsedMs(status, now);
  return elapsed > 0 ? (Number(status.transferredBytes) * 1000) / elapsed : 0;
}
