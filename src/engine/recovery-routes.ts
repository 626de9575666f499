// Which startup recovery ends which job: a plain local archive is checked
// in place, synchronously (recover-jobs.ts); the rest through its store
// (recover-store-jobs.ts).
import * as path from "node:path";
import { compressionOfName } from "../stores/archive-names.js";
import { DEFAULT_TARGET } from "../stores/store-targets.js";
import type { JobExtras } from "./job-record.js";
import type { JobStatus } from "./types.js";

/** True for the jobs recover-jobs.ts leaves to this module. */
export function recoveredThroughStore(status: JobStatus, extras: JobExtras): boolean {
  const target = extras.target ?? DEFAULT_TARGET;
  if (target !== DEFAULT_TARGET) return true;
  const compression = compressionOfName(status.backupFile);
  return extras.pending !== undefined && compression !== undefined && compression !== "none";
}

/** The store's key of a job's archive: local archives by their path in the backup dir, others as named. */
export function archiveKey(backupDir: string, target: string, backupFile: string): string {
  return target === DEFAULT_TARGET ? path.relative(backupDir, backupFile) : backupFile;
}
