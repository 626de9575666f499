// Listing jobs (newest first, stable pages while jobs are added, state
// filter, live counters of active jobs, page size defaults and limits) and
// request-id idempotency (same id within 24 hours: same job; later: a new
// one; refused requests not remembered).
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import { JOB_STORE_FILE, REQUEST_ID_TTL_MS } from "../src/engine/backup-engine.js";
import { toStoredJob } from "../src/engine/job-record.js";
import type { JobStatus } from "../src/engine/types.js";
import { JobStore } from "../src/store/job-store.js";
import {
  backupSpec,
  blockPattern,
  expectEngineError,
  KiB,
  MiB,
  useEngineSandbox,
  waitForEnd,
  waitUntil,
  writeSource,
} from "./engine-helpers.js";

/** The engine's wall clock (it reads it only when it needs the time). */
let clock: number;
const fixture = useEngineSandbox({ now: () => clock });
let source: string;

beforeEach(async () => {
  clock = Date.UTC(2030, 0, 1);
  source = await writeSource(fixture.sandbox, "tiny.raw", Buffer.alloc(4 * KiB, 1));
});

async function runBackup(backupFile: string, requestId?: string): Promise<JobStatus> {
  const { engine } = fixture;
  const status = await engine.start(
    backupSpec({
      backupFile,
      devices: [{ name: "d", source: { kind: "path", path: source } }],
      ...(requestId === undefined ? {} : { requestId }),
    }),
  );
  return waitForEnd(engine, status.uuid);
}

describe("list", () => {
  it("pages over 500 jobs while jobs are added, without duplicates or gaps", async () => {
    const { sandbox, engine } = fixture;
    const existing: string[] = [];
    for (let index = 0; index < 500; index++) existing.push((await runBackup(`job-${index}.vma`)).uuid);

    const seen: string[] = [];
    const added: string[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const page = engine.list({ pageSize: 37, pageToken: token });
      seen.push(...page.statuses.map((status) => status.uuid));
      token = page.nextPageToken;
      pages += 1;
      // New jobs (started, some still running) must not shift the pages to come.
      const own = await writeSource(sandbox, `new-${pages}.raw`, Buffer.alloc(4 * KiB, 2));
      const started = await engine.start(
        backupSpec({ backupFile: `new-${pages}.vma`, devices: [{ name: "d", source: { kind: "path", path: own } }] }),
      );
      added.push(started.uuid);
      if (pages % 2 === 0) await waitForEnd(engine, started.uuid);
    } while (token !== undefined);

    expect(pages).toBe(Math.ceil(500 / 37));
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual([...existing].reverse());
    // A fresh listing shows the added jobs first, newest first.
    await waitUntil(() => engine.list({ pageSize: 0, states: ["active"] }).statuses.length === 0);
    const fresh = engine.list({ pageSize: 1000 }).statuses.map((status) => status.uuid);
    expect(fresh).toEqual([...added.reverse(), ...existing.reverse()]);
  });

  it("applies the default page size and caps large ones", async () => {
    const { sandbox, engine } = fixture;
    // Seeded through the store: 1005 finished jobs.
    engine.list({ pageSize: 1 }); // the engine's store exists
    const store = JobStore.open(path.join(sandbox.state, JOB_STORE_FILE));
    const template = await runBackup("template.vma");
    for (let index = 0; index < 1004; index++) {
      const uuid = `00000000-0000-4000-8000-${String(index).padStart(12, "0")}`;
      store.save(toStoredJob({ ...template, uuid, revision: template.revision + 1 + index }, {}));
    }
    store.close();
    const first = engine.list({ pageSize: 0 });
    expect(first.statuses).toHaveLength(100);
    expect(first.nextPageToken).toBeDefined();
    const capped = engine.list({ pageSize: 5000 });
    expect(capped.statuses).toHaveLength(1000);
    const rest = engine.list({ pageSize: 5000, pageToken: capped.nextPageToken });
    expect(rest.statuses).toHaveLength(5);
    expect(rest.nextPageToken).toBeUndefined();
    expect(rest.statuses.at(-1)?.uuid).toBe(template.uuid);
  });

  it("filters by state and shows active jobs with their live counters", async () => {
    const { sandbox, engine } = fixture;
    const done = await runBackup("done.vma");
    const big = await writeSource(
      sandbox,
      "big.raw",
      blockPattern(8 * MiB, (block) => block % 2 === 0),
    );
    const running = await engine.start(
      backupSpec({
        backupFile: "running.vma",
        devices: [{ name: "d", source: { kind: "path", path: big } }],
        speedLimit: 4 * MiB,
      }),
    );
    const cancelledStart = await engine.start(
      backupSpec({
        backupFile: "cancelled.vma",
        devices: [{ name: "d", source: { kind: "path", path: source } }],
        speedLimit: 1,
      }),
    );
    const [cancelled] = await engine.cancel(cancelledStart.uuid);

    // The rate is known once the job has run for a whole measuring window.
    await waitUntil(() => (engine.query(running.uuid)?.rate ?? 0) > 0);
    const active = engine.list({ pageSize: 10, states: ["active"] }).statuses;
    expect(active.map((status) => status.uuid)).toEqual([running.uuid]);
    expect(active[0]?.transferredBytes).toBeGreaterThan(MiB);
    expect(active[0]?.rate).toBeGreaterThan(0);

    const finished = engine.list({ pageSize: 10, states: ["done", "cancelled"] }).statuses;
    expect(finished).toEqual([cancelled, done]);
    expect(engine.list({ pageSize: 10, states: ["error"] }).statuses).toEqual([]);
    expect(engine.list({ pageSize: 10, states: ["done", "done"] }).statuses).toEqual([done]);
    expect(engine.list({ pageSize: 10, states: [] }).statuses.map((status) => status.uuid)).toEqual([
      cancelled?.uuid,
      running.uuid,
      done.uuid,
    ]);
    await engine.cancel(running.uuid);
  });

  it("refuses a bad page token, page size or state", async () => {
    const { engine } = fixture;
    await runBackup("a.vma");
    await runBackup("b.vma");
    const { nextPageToken } = engine.list({ pageSize: 1 });
    expect(nextPageToken).toBeDefined();
    for (const token of ["garbage", `${nextPageToken}x`, Buffer.from("v1:-3").toString("base64url")]) {
      await expectEngineError(
        () => engine.list({ pageSize: 1, pageToken: token }),
        "invalid-argument",
        "PAGE_TOKEN_INVALID",
        "page_token",
      );
    }
    expect(engine.list({ pageSize: 1, pageToken: "" }).statuses).toHaveLength(1);
    for (const pageSize of [-1, 1.5, Number.NaN]) {
      await expectEngineError(() => engine.list({ pageSize }), "invalid-argument", "PAGE_SIZE_INVALID", "page_size");
    }
    await expectEngineError(
      () => engine.list({ pageSize: 1, states: ["done", "paused" as never] }),
      "invalid-argument",
      "JOB_STATE_INVALID",
      "states[1]",
    );
  });
});

describe("request ids", () => {
  it("answers a repeated request id with the job it started, even while it runs", async () => {
    const { sandbox, engine } = fixture;
    const big = await writeSource(
      sandbox,
      "big.raw",
      blockPattern(4 * MiB, () => false),
    );
    const spec = backupSpec({
      backupFile: "vm.vma",
      devices: [{ name: "d", source: { kind: "path", path: big } }],
      speedLimit: 1,
      requestId: "retry-1",
    });
    const first = await engine.start(spec);
    expect(first.requestId).toBe("retry-1");
    const again = await engine.start(spec);
    expect(again.uuid).toBe(first.uuid);
    expect(again.state).toBe("active");
    // A different request with the same id starts nothing and says so.
    const other = await expectEngineError(
      () => engine.start({ ...spec, backupFile: "other.vma" }),
      "already-exists",
      "REQUEST_ID_REUSED",
      "request_id",
    );
    expect(other.metadata).toEqual({ uuid: first.uuid });
    expect(other.message).toMatch(/^request_id: "retry-1" was used by job \S+ for a different request/);
    expect(await fs.readdir(sandbox.out)).toEqual(["vm.vma.partial"]);

    const [cancelled] = await engine.cancel(first.uuid);
    expect(await engine.start(spec)).toEqual(cancelled);
  });

  it("starts one job for racing retries of one request id", async () => {
    const { sandbox, engine } = fixture;
    const spec = backupSpec({
      backupFile: "race.vma",
      devices: [{ name: "d", source: { kind: "path", path: source } }],
      speedLimit: 1,
      requestId: "race",
    });
    const results = await Promise.all(Array.from({ length: 10 }, () => engine.start(spec)));
    expect(new Set(results.map((status) => status.uuid)).size).toBe(1);
    expect(await fs.readdir(sandbox.out)).toHaveLength(1);
    await engine.cancel();
  });

  it("compares every part of the request, and not how it was written", async () => {
    const { sandbox, engine } = fixture;
    const other = await writeSource(sandbox, "other.raw", Buffer.alloc(4 * KiB, 2));
    const spec = backupSpec({
      backupFile: "vm.vma",
      devices: [{ name: "d", source: { kind: "path", path: source } }],
      configs: [{ name: "qemu-server.conf", data: Buffer.from("memory: 512\n") }],
      speedLimit: 1,
      requestId: "every-field",
    });
    const first = await engine.start(spec);
    // The same request built anew (other objects, a Uint8Array for a Buffer) is a retry.
    const rebuilt = {
      ...spec,
      devices: spec.devices.map((device) => ({ ...device })),
      configs: spec.configs.map((config) => ({ name: config.name, data: new Uint8Array(config.data) })),
    };
    expect((await engine.start(rebuilt)).uuid).toBe(first.uuid);
    const changes: Array<Partial<typeof spec>> = [
      { backupFile: "other.vma" },
      { devices: [{ name: "e", source: { kind: "path", path: source } }] },
      { devices: [{ name: "d", source: { kind: "path", path: other } }] },
      {
        devices: [
          { name: "d", source: { kind: "path", path: source } },
          { name: "e", source: { kind: "path", path: other } },
        ],
      },
      { configs: [] },
      { configs: [{ name: "qemu-server.conf", data: Buffer.from("memory: 1024\n") }] },
      { speedLimit: 0 },
    ];
    for (const change of changes) {
      await expectEngineError(
        () => engine.start({ ...spec, ...change }),
        "already-exists",
        "REQUEST_ID_REUSED",
        "request_id",
      );
    }
    expect(await fs.readdir(sandbox.out)).toEqual(["vm.vma.partial"]);
    await engine.cancel();
  });

  it("starts a new job once 24 hours have passed", async () => {
    const { sandbox, engine } = fixture;
    const first = await runBackup("day-1.vma", "nightly");
    clock += REQUEST_ID_TTL_MS - 1;
    expect(
      (
        await engine.start(
          backupSpec({
            backupFile: "day-1.vma",
            devices: [{ name: "d", source: { kind: "path", path: source } }],
            requestId: "nightly",
          }),
        )
      ).uuid,
    ).toBe(first.uuid);
    clock += 2;
    // A day later the id is free again, for any request.
    const second = await runBackup("day-2.vma", "nightly");
    expect(second.uuid).not.toBe(first.uuid);
    expect(second.startTime.getTime()).toBe(clock);
    // From now on the id means the new job.
    expect(
      (
        await engine.start(
          backupSpec({
            backupFile: "day-2.vma",
            devices: [{ name: "d", source: { kind: "path", path: source } }],
            requestId: "nightly",
          }),
        )
      ).uuid,
    ).toBe(second.uuid);
    await expectEngineError(
      () =>
        engine.start(
          backupSpec({
            backupFile: "day-1.vma",
            devices: [{ name: "d", source: { kind: "path", path: source } }],
            requestId: "nightly",
          }),
        ),
      "already-exists",
      "REQUEST_ID_REUSED",
    );
    expect(await fs.readdir(sandbox.out)).toEqual(expect.arrayContaining(["day-1.vma", "day-2.vma"]));
    expect(await fs.readdir(sandbox.out)).toHaveLength(2);
  });

  it("remembers request ids across restarts", async () => {
    const first = await runBackup("kept.vma", "durable");
    const engine = await fixture.restartEngine();
    const again = await engine.start(
      backupSpec({
        backupFile: "kept.vma",
        devices: [{ name: "d", source: { kind: "path", path: source } }],
        requestId: "durable",
      }),
    );
    expect(again).toEqual(first);
    await expectEngineError(
      () =>
        engine.start(
          backupSpec({
            backupFile: "moved.vma",
            devices: [{ name: "d", source: { kind: "path", path: source } }],
            requestId: "durable",
          }),
        ),
      "already-exists",
      "REQUEST_ID_REUSED",
    );
  });

  it("does not remember refused requests and refuses ids over 128 bytes", async () => {
    const { engine } = fixture;
    await expectEngineError(
      () =>
        engine.start(
          backupSpec({
            backupFile: "bad.txt",
            devices: [{ name: "d", source: { kind: "path", path: source } }],
            requestId: "once",
          }),
        ),
      "invalid-argument",
      "BACKUP_FILE_BAD_SUFFIX",
    );
    const started = await runBackup("good.vma", "once");
    expect(started.state).toBe("done");

    await expectEngineError(
      () =>
        engine.start(
          backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], requestId: "r".repeat(129) }),
        ),
      "invalid-argument",
      "REQUEST_ID_INVALID",
      "request_id",
    );
    // 43 characters, 129 bytes.
    await expectEngineError(
      () =>
        engine.start(
          backupSpec({ devices: [{ name: "d", source: { kind: "path", path: source } }], requestId: "€".repeat(43) }),
        ),
      "invalid-argument",
      "REQUEST_ID_INVALID",
      "request_id",
    );
    const longest = await runBackup("longest.vma", `${"€".repeat(42)}rr`);
    expect(longest.requestId).toBe(`${"€".repeat(42)}rr`);
    // An empty id is no id: two starts, two jobs.
    const a = await runBackup("empty-1.vma", "");
    const b = await runBackup("empty-2.vma", "");
    expect(a.uuid).not.toBe(b.uuid);
    expect(a.requestId).toBeUndefined();
  });
});
