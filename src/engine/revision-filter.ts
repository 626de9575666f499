// Passes each job's statuses on only when they are newer than what the
// watcher has. A job's revision grows with every change, so a status that
// is not newer is one the watcher already has (a snapshot published again
// after it came as the opening status, or one at or before a resumed
// watch's after_revision): dropping it never drops a change, and every
// watcher sees each job's revisions strictly increasing. Used by the
// status hub per subscription and by the server per watch stream.
import type { JobStatus } from "./types.js";

export class RevisionFilter {
  private readonly floor: number | undefined;
  /** The revision of the last status passed on, per job. */
  private readonly latest = new Map<string, number>();

  /** `afterRevision`: nothing at or before it passes (undefined: no floor). */
  constructor(afterRevision?: number) {
    this.floor = afterRevision;
  }

  /** Whether `status` is newer than what was passed on for its job; if so it is noted as passed on. */
  isNew(status: JobStatus): boolean {
    const seen = this.latest.get(status.uuid) ?? this.floor;
    if (seen !== undefined && status.revision <= seen) return false;
    this.latest.set(status.uuid, status.revision);
    return true;
  }

  /** Forgets a job (after its terminal status nothing follows), which bounds the map. */
  forget(uuid: string): void {
    this.latest.delete(uuid);
  }

  /** Forgets every job. */
  clear(): void {
    this.latest.clear();
  }
}
