// Parses `--state` of `vmabackup list`: a job state by its short name, as
// the text output prints it ("active", "done", "error", "cancelled"; any case).
import { BackupState } from "../../gen/vmabackup/v1/backup_pb.js";
import { ArgumentSyntaxError } from "./parse-error.js";

const STATES: ReadonlyMap<string, BackupState> = new Map([
  ["active", BackupState.ACTIVE],
  ["done", BackupState.DONE],
  ["error", BackupState.ERROR],
  ["cancelled", BackupState.CANCELLED],
]);

export const STATE_NAMES: readonly string[] = [...STATES.keys()];

export function parseState(text: string): BackupState {
  const state = STATES.get(text.trim().toLowerCase());
  if (state === undefined) {
    throw new ArgumentSyntaxError(`expected one of ${STATE_NAMES.join(", ")}`);
  }
  return state;
}
