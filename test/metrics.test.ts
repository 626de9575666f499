// The Prometheus endpoint of `serve --metrics-listen`: scraped during a
// throttled backup its byte counters grow, after it the job counters and the
// duration histogram hold the job; RPCs are counted by method and code, auth
// refusals by reason; every server has its own registry; other paths are 404;
// shutdown closes it; and the CLI refuses a non-loopback address without
// --insecure.
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { DaemonMetrics } from "../src/metrics/daemon-metrics.js";
import { bearerTokenInterceptor } from "../src/client/bearer-token.js";
import { BearerTokens, createAuthInterceptor } from "../src/server/auth.js";
import { createClient } from "../src/client/grpc-client.js";
import { startServer } from "../src/server/server.js";
import type { RunningServer } from "../src/server/server.js";
import { captureLog } from "./helpers/log-capture.js";
import { halfRandomImage } from "./helpers/test-server.js";
import type { BackupClient } from "./helpers/test-server.js";
import { runServe } from "./helpers/serve-process.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const TOKEN = "vmab-metrics-test-token-5c1d";
/** 1 MiB at 1 MiB/s: about a second, long enough for several scrapes. */
const IMAGE_SIZE = MiB;
const SPEED_LIMIT = MiB;

/** One sample of a scrape: metric name, labels, value. */
interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Parses the Prometheus text format (enough of it for prom-client's output). */
function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]!] = pair[2]!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** The value of the one sample named `name` whose labels include `labels`; undefined when there is none. */
function sampleValue(
  samples: readonly Sample[],
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = samples.filter(
    (sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value),
  );
  expect(found.length, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`).toBeLessThanOrEqual(1);
  return found[0]?.value;
}

async function scrape(address: string): Promise<Sample[]> {
  const response = await fetch(`http://${address}/metrics`);
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseSamples(await response.text());
}

interface MetricsServer {
  readonly server: RunningServer;
  readonly metricsAddress: string;
  /** Sends the bearer token. */
  readonly client: BackupClient;
  /** Sends no token. */
  readonly anonymous: BackupClient;
  readonly sourceDir: string;
  stop(): Promise<void>;
}

/** A real server with bearer tokens and metrics on 127.0.0.1:0, in its own temporary directories. */
async function startMetricsServer(): Promise<MetricsServer> {
  const rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-metrics-"));
  const [sourceDir, backupDir, stateDir] = ["sources", "backups", "state"].map((name) => path.join(rootDir, name)) as [
    string,
    string,
    string,
  ];
  await Promise.all([sourceDir, backupDir, stateDir].map((dir) => mkdir(dir)));
  const log = captureLog();
  const metrics = new DaemonMetrics();
  const auth = createAuthInterceptor({
    tokens: BearerTokens.parse(TOKEN, "test tokens"),
    logger: log.logger,
    onRefusal: metrics.countAuthFailure,
  });
  const server = await startServer({
    listen: "127.0.0.1:0",
    backupDir,
    sourceRoots: [sourceDir],
    stateDir,
    progressIntervalMs: 50,
    logger: log.logger,
    shutdownGraceMs: 200,
    interceptors: [auth],
    metrics: { listen: "127.0.0.1:0", metrics },
  });
  const tokenChannel: grpc.ChannelOptions = { interceptors: [bearerTokenInterceptor(TOKEN)] };
  const client = createClient(BackupService, server.address, undefined, tokenChannel);
  const anonymous = createClient(BackupService, server.address);
  return {
    server,
    metricsAddress: server.metricsAddress!,
    client,
    anonymous,
    sourceDir,
    async stop() {
      client.close();
      anonymous.close();
      await server.shutdown("test finished");
      await rm(rootDir, { recursive: true, force: true });
    },
  };
}

describe("the metrics endpoint of a server", () => {
  let fixture: MetricsServer;

  beforeAll(async () => {
    fixture = await startMetricsServer();
  });

  afterAll(async () => {
    await fixture?.stop();
  });

  it("shows the byte counters growing during a throttled backup, and the job after it", async () => {
    const image = halfRandomImage(IMAGE_SIZE);
    const source = path.join(fixture.sourceDir, "disk.raw");
    await writeFile(source, image);
    const before = await scrape(fixture.metricsAddress);
    expect(sampleValue(before, "vmabackup_read_bytes_total")).toBe(0);
    expect(sampleValue(before, "vmabackup_jobs_finished_total", { state: "done" })).toBe(0);
    expect(sampleValue(before, "process_cpu_seconds_total")).toBeGreaterThan(0);

    const started = await fixture.client.backup({
      backupFile: "metrics.vma",
      devices: [{ name: "drive-scsi0", path: source }],
      speedLimit: BigInt(SPEED_LIMIT),
    });
    const uuid = started.status!.uuid;
    const watch = fixture.client.watchBackup({ uuid });
    const ended = (async () => {
      let last: BackupState | undefined;
      for await (const message of watch) last = message.status?.state;
      return last;
    })();

    // Scrape until two scrapes during the job show the read counter between 0 and the image size, and growing.
    const readDuring: number[] = [];
    let watchersDuring = 0;
    let activeDuring = 0;
    while (readDuring.length < 2) {
      const samples = await scrape(fixture.metricsAddress);
      const read = sampleValue(samples, "vmabackup_read_bytes_total")!;
      expect(read, "the job ended before two scrapes saw it running").toBeLessThan(IMAGE_SIZE);
      if (read > (readDuring.at(-1) ?? 0)) {
        readDuring.push(read);
        watchersDuring = sampleValue(samples, "vmabackup_watchers_active")!;
        activeDuring = sampleValue(samples, "vmabackup_jobs_active")!;
        expect(
          sampleValue(samples, "vmabackup_written_bytes_total")! + sampleValue(samples, "vmabackup_zero_bytes_total")!,
        ).toBe(read);
      }
      await new Promise((resolve) => setTimeout(resolve, 60));
    }
    expect(readDuring[1]).toBeGreaterThan(readDuring[0]!);
    expect(watchersDuring).toBe(1);
    expect(activeDuring).toBe(1);

    expect(await ended).toBe(BackupState.DONE);
    // The endpoint sees the job end through the engine's watch, a hop after the client's.
    await expect
      .poll(async () =>
        sampleValue(await scrape(fixture.metricsAddress), "vmabackup_jobs_finished_total", { state: "done" }),
      )
      .toBe(1);
    const after = await scrape(fixture.metricsAddress);
    expect(sampleValue(after, "vmabackup_jobs_started_total")).toBe(1);
    expect(sampleValue(after, "vmabackup_jobs_active")).toBe(0);
    expect(sampleValue(after, "vmabackup_job_duration_seconds_count", { state: "done" })).toBe(1);
    expect(sampleValue(after, "vmabackup_job_duration_seconds_sum", { state: "done" })).toBeGreaterThan(0.5);
    expect(sampleValue(after, "vmabackup_read_bytes_total")).toBe(IMAGE_SIZE);
    expect(sampleValue(after, "vmabackup_zero_bytes_total")).toBe(IMAGE_SIZE / 2);
    expect(sampleValue(after, "vmabackup_written_bytes_total")).toBe(IMAGE_SIZE / 2);
    const rpc = { service: "vmabackup.v1.BackupService" };
    expect(sampleValue(after, "vmabackup_rpcs_total", { ...rpc, method: "Backup", code: "OK" })).toBe(1);
    expect(sampleValue(after, "vmabackup_rpcs_total", { ...rpc, method: "WatchBackup", code: "OK" })).toBe(1);
  });

  it("counts RPCs by method and code, and refused calls by reason", async () => {
    const unknownJob = fixture.client.queryBackup({ uuid: "00000000-0000-4000-8000-000000000000" });
    await expect(unknownJob).rejects.toMatchObject({ code: 5 /* NOT_FOUND */ });
    await expect(fixture.anonymous.listBackups({})).rejects.toMatchObject({ code: 16 /* UNAUTHENTICATED */ });
    // A watcher that leaves: its call ends without a status from the handler.
    const leaving = new AbortController();
    const watch = fixture.client.watchBackup({ uuid: "" }, { signal: leaving.signal });
    const first = watch[Symbol.asyncIterator]().next();
    await expect.poll(() => fixture.server.watchStreamCount).toBe(1);
    leaving.abort();
    await expect(first).rejects.toMatchObject({ code: 1 /* CANCELLED */ });
    await expect.poll(() => fixture.server.watchStreamCount).toBe(0);

    const samples = await scrape(fixture.metricsAddress);
    const rpc = { service: "vmabackup.v1.BackupService" };
    expect(sampleValue(samples, "vmabackup_rpcs_total", { ...rpc, method: "QueryBackup", code: "NOT_FOUND" })).toBe(1);
    expect(
      sampleValue(samples, "vmabackup_rpcs_total", { ...rpc, method: "ListBackups", code: "UNAUTHENTICATED" }),
    ).toBe(1);
    expect(sampleValue(samples, "vmabackup_rpcs_total", { ...rpc, method: "WatchBackup", code: "CANCELLED" })).toBe(1);
    expect(sampleValue(samples, "vmabackup_auth_failures_total", { reason: "missing" })).toBe(1);
    expect(sampleValue(samples, "vmabackup_auth_failures_total", { reason: "invalid" })).toBe(0);
  });

  it("counts calls to paths that name no method under one label, so callers cannot grow the label set", async () => {
    const paths = [
      "/vmabackup.v1.BackupService/DeleteEverything",
      "/attacker.Chosen/Label1",
      "/attacker.Chosen/Label2",
    ];
    const raw = new grpc.Client(fixture.server.address, grpc.credentials.createInsecure());
    try {
      for (const method of paths) {
        const code = await new Promise<number>((resolve) => {
          raw.makeUnaryRequest(
            method,
            (value: Buffer) => value,
            (value: Buffer) => value,
            Buffer.alloc(0),
            (error) => resolve(error?.code ?? 0),
          );
        });
        expect(code).toBe(16 /* UNAUTHENTICATED: no token */);
      }
    } finally {
      raw.close();
    }
    const samples = await scrape(fixture.metricsAddress);
    expect(
      sampleValue(samples, "vmabackup_rpcs_total", { service: "unknown", method: "unknown", code: "UNAUTHENTICATED" }),
    ).toBe(paths.length);
    const labelled = samples
      .filter((sample) => sample.name === "vmabackup_rpcs_total")
      .map((sample) => sample.labels.method);
    expect(labelled).not.toContain("DeleteEverything");
    expect(labelled).not.toContain("Label1");
  });

  it("answers 404 for any other path", async () => {
    const response = await fetch(`http://${fixture.metricsAddress}/`);
    expect(response.status).toBe(404);
    await response.text();
  });

  it("keeps each server's metrics apart, and closes the endpoint on shutdown", async () => {
    const other = await startMetricsServer();
    try {
      await expect(other.anonymous.listBackups({})).rejects.toMatchObject({ code: 16 });
      expect(
        sampleValue(await scrape(other.metricsAddress), "vmabackup_auth_failures_total", { reason: "missing" }),
      ).toBe(1);
      expect(sampleValue(await scrape(other.metricsAddress), "vmabackup_jobs_started_total")).toBe(0);
    } finally {
      await other.stop();
    }
    await expect(fetch(`http://${other.metricsAddress}/metrics`)).rejects.toThrow();
  });
});

describe("serve --metrics-listen", () => {
  it("refuses an address other than loopback without --insecure", async () => {
    const serve = runServe(["--metrics-listen", "0.0.0.0:0"]);
    const { code } = await serve.exited;
    expect(code).toBe(2);
    expect(serve.stderr.join("")).toMatch(/refusing to serve metrics on 0\.0\.0\.0:0.*--insecure/);
  });

  it("serves the metrics of the daemon on loopback", async () => {
    const rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-metrics-serve-"));
    const serve = runServe([
      "--listen",
      "127.0.0.1:0",
      "--metrics-listen",
      "127.0.0.1:0",
      "--backup-dir",
      path.join(rootDir, "backups"),
      "--source-root",
      path.join(rootDir, "sources"),
      "--state-dir",
      path.join(rootDir, "state"),
    ]);
    try {
      const listening = await serve.waitForLog((line) => line.msg === "listening");
      const samples = await scrape(listening.metricsAddress as string);
      expect(sampleValue(samples, "vmabackup_jobs_active")).toBe(0);
      expect(sampleValue(samples, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0);
    } finally {
      await serve.kill();
      await rm(rootDir, { recursive: true, force: true });
    }
  });
});
