// The daemon's Prometheus metrics, on a private registry: every server gets
// its own, so several servers in one process (tests) never share a series.
// The engine knows nothing of this: job metrics come from its status stream
// (job-metrics.ts), RPC metrics from a grpc-js interceptor (rpc-metrics.ts),
// and gauges read their value when scraped.
import type * as grpc from "@grpc/grpc-js";
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";
import { JobMetrics } from "./job-metrics.js";
import type { JobStatusStream } from "./job-metrics.js";
import { RpcMetrics } from "./rpc-metrics.js";

/** Reasons the bearer-token check gives (src/server/auth.ts); each series exists from the start. */
const AUTH_FAILURE_REASONS = ["missing", "malformed", "invalid"];

export class DaemonMetrics {
  readonly registry = new Registry();
  /** Counts every RPC; put it before other interceptors, so it sees what they refuse. */
  readonly rpcInterceptor: grpc.ServerInterceptor;
  private readonly rpcs: RpcMetrics;
  private readonly jobs: JobMetrics;
  private readonly authFailures: Counter<"reason">;
  private watcherCount: () => number = () => 0;

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    this.jobs = new JobMetrics(this.registry);
    this.rpcs = new RpcMetrics(this.registry);
    this.rpcInterceptor = this.rpcs.interceptor;
    const watcherCount = (): number => this.watcherCount();
    new Gauge({
      name: "vmabackup_watchers_active",
      help: "WatchBackup streams open now.",
      registers: [this.registry],
      collect() {
        this.set(watcherCount());
      },
    });
    this.authFailures = new Counter({
      name: "vmabackup_auth_failures_total",
      help: "Calls refused for want of a valid bearer token, by reason (missing, malformed, invalid).",
      labelNames: ["reason"],
      registers: [this.registry],
    });
    for (const reason of AUTH_FAILURE_REASONS) this.authFailures.labels(reason).inc(0);
  }

  /** Counts a call the bearer-token check refused: the auth interceptor's onRefusal. */
  readonly countAuthFailure = (reason: string): void => {
    this.authFailures.labels(reason).inc();
  };

  /** Updates the job metrics from the engine's all-jobs watch until it ends (on engine shutdown). */
  followJobs(stream: JobStatusStream): Promise<void> {
    return this.jobs.follow(stream);
  }

  /** Where vmabackup_watchers_active reads its value when scraped. */
  countWatchersWith(count: () => number): void {
    this.watcherCount = count;
  }

  /** Which paths are registered methods: others are counted as "unknown". */
  knowMethodsBy(isKnownPath: (path: string) => boolean): void {
    this.rpcs.knowPathsBy(isKnownPath);
  }
}
