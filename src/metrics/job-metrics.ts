// Job metrics from the engine's status stream: the stream carries every
// state change and, coalesced, the growing counters of active jobs, so the
// byte counters here grow during a backup by the difference between a job's
// successive statuses, and reach its exact totals with its final status.
import { Counter, Gauge, Histogram } from "prom-client";
import type { Registry } from "prom-client";
import { TERMINAL_STATES } from "../engine/index.js";
import type { JobState, JobStatus } from "../engine/index.js";

/** The engine's all-jobs watch (a StatusSubscription), as far as metrics need it. */
export interface JobStatusStream extends AsyncIterable<JobStatus> {
  close(): void;
}

/** Final states, so that every series exists (at 0) from the start and rate() works at once. */
const END_STATES: readonly JobState[] = [...TERMINAL_STATES];

/** Job durations range from seconds (small disks, early failures) to many hours. */
const DURATION_BUCKETS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14_400, 28_800, 86_400];

/** What has been counted of a job still running. */
interface CountedBytes {
  transferred: number;
  zero: number;
}

export class JobMetrics {
  private readonly started: Counter;
  private readonly finished: Counter<"state">;
  private readonly duration: Histogram<"state">;
  private readonly readBytes: Counter;
  private readonly writtenBytes: Counter;
  private readonly zeroBytes: Counter;
  /** Active jobs by uuid, with the bytes counted of each so far. */
  private readonly active = new Map<string, CountedBytes>();

  constructor(registry: Registry) {
    const registers = [registry];
    const active = this.active;
    new Gauge({
      name: "vmabackup_jobs_active",
      help: "Backup jobs running now.",
      registers,
      collect() {
        this.set(active.size);
      },
    });
    this.started = new Counter({ name: "vmabackup_jobs_started_total", help: "Backup jobs started.", registers });
    this.finished = new Counter({
      name: "vmabackup_jobs_finished_total",
      help: "Backup jobs ended, by final state (done, error, cancelled).",
      labelNames: ["state"],
      registers,
    });
    this.duration = new Histogram({
      name: "vmabackup_job_duration_seconds",
      help: "Time from start to end of backup jobs, by final state.",
      labelNames: ["state"],
      buckets: DURATION_BUCKETS,
      registers,
    });
    for (const state of END_STATES) {
      this.finished.labels(state).inc(0);
      this.duration.zero({ state });
    }
    this.readBytes = new Counter({
      name: "vmabackup_read_bytes_total",
      help: "Source disk bytes read by backup jobs; grows during a job.",
      registers,
    });
    this.writtenBytes = new Counter({
      name: "vmabackup_written_bytes_total",
      help:
        "Source disk bytes stored in archives (read bytes outside all-zero 4 KiB blocks; archive framing not " +
        "counted).",
      registers,
    });
    this.zeroBytes = new Counter({
      name: "vmabackup_zero_bytes_total",
      help: "Source disk bytes read that lay in all-zero 4 KiB blocks, so were not stored.",
      registers,
    });
  }

  /** Counts one status of a job: its start, the bytes since its last status, its end. */
  apply(status: JobStatus): void {
    let counted = this.active.get(status.uuid);
    if (counted === undefined) {
      // A job seen for the first time; one that is already over was never
      // seen active (it ended before we looked) and is not counted as started.
      counted = { transferred: 0, zero: 0 };
      if (status.state === "active") {
        this.started.inc();
        this.active.set(status.uuid, counted);
      }
    }
    const transferred = Math.max(0, status.transferredBytes - counted.transferred);
    const zero = Math.max(0, status.zeroBytes - counted.zero);
    counted.transferred += transferred;
    counted.zero += zero;
    this.readBytes.inc(transferred);
    this.zeroBytes.inc(zero);
    this.writtenBytes.inc(Math.max(0, transferred - zero));
    if (TERMINAL_STATES.has(status.state)) {
      this.active.delete(status.uuid);
      this.finished.labels(status.state).inc();
      if (status.endTime !== undefined) {
        this.duration.labels(status.state).observe((status.endTime.getTime() - status.startTime.getTime()) / 1000);
      }
    }
  }

  /** Applies every status of `stream` until it ends (on engine shutdown). */
  async follow(stream: JobStatusStream): Promise<void> {
    try {
      for await (const status of stream) this.apply(status);
    } finally {
      stream.close();
    }
  }
}
