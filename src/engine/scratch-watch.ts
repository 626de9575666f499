// Polls the scratch usage of a job's live sources (qemu: what the guest
// wrote since the point in time) into the job's status, once a second,
// while the job runs. Sources without scratchBytes cost nothing.
import type { DiskSource } from "../sources/disk-source.js";
import type { Job } from "./job.js";

/** How often scratch usage is asked for. */
export const SCRATCH_POLL_MS = 1000;

export interface ScratchWatch {
  stop(): void;
}

/** Starts polling; `onChange` runs after a poll changed the job. */
export function watchScratch(job: Job, sources: readonly DiskSource[], onChange: () => void): ScratchWatch {
  const live = sources.flatMap((source, index) => (source.scratchBytes === undefined ? [] : [{ source, index }]));
  if (live.length === 0) return { stop: () => undefined };
  let polling = false;
  const poll = async (): Promise<void> => {
    if (polling) return;
    polling = true;
    try {
      for (const { source, index } of live) {
        // A failing poll only leaves the last figure: the read path reports real failures.
        const bytes = await source.scratchBytes?.().catch(() => undefined);
        if (bytes !== undefined && job.isActive) job.setScratchBytes(index, bytes);
      }
      onChange();
    } finally {
      polling = false;
    }
  };
  const timer = setInterval(() => void poll(), SCRATCH_POLL_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
