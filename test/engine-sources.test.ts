// The engine's source seam: it reads only through DiskSource, opens sources
// through one opener per kind (every device of a kind in one call), never
// reads clusters a source maps as zero (they cost no speed-limit time),
// closes sources and releases openers on every end, and maps refusals of
// the sources to EngineErrors naming the field.
import { randomBytes } from "node:crypto";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { EngineError } from "../src/engine/errors.js";
import { fromStoredJob, toStoredJob } from "../src/engine/job-record.js";
import type { OpenedSources, SourceOpeners, SourceOpenRequest } from "../src/engine/source-opener.js";
import { createSourceOpeners } from "../src/engine/source-openers.js";
import type { SourceOpenerContext } from "../src/engine/source-openers.js";
import type { DeviceSourceKind, JobStatus } from "../src/engine/types.js";
import type { SourceExtent } from "../src/sources/disk-source.js";
import { SourceRefusal } from "../src/sources/source-refusal.js";
import {
  backupSpec,
  CLUSTER,
  makeEngine,
  MiB,
  parseVma,
  useSandboxWithEngines,
  waitForEnd,
  waitUntil,
  writeSource,
} from "./engine-helpers.js";
import { MemorySource } from "./helpers/memory-source.js";

const NBD_URI = "nbd://127.0.0.1/e";

/** What openers were asked, and whether their jobs were released. */
interface OpenerLog {
  readonly calls: Array<{ kind: DeviceSourceKind; indexes: number[]; jobId: string }>;
  released: number;
}

/** The real openers, with nbd and qemu serving the given in-memory sources in turn. */
function openersWith(sources: MemorySource[], log: OpenerLog): (context: SourceOpenerContext) => SourceOpeners {
  const memory =
    <K extends DeviceSourceKind>(kind: K) =>
    async (request: SourceOpenRequest<K>): Promise<OpenedSources> => {
      log.calls.push({ kind, indexes: request.devices.map((device) => device.index), jobId: request.jobId });
      return {
        sources: request.devices.map(() => sources.shift() as MemorySource),
        release: async () => {
          log.released += 1;
        },
      };
    };
  return (context) => ({ ...createSourceOpeners(context), nbd: memory("nbd"), qemu: memory("qemu") });
}

/** `clusters` clusters, data (random) where `isData`, mapped as such; the map comes back 3 extents per call. */
function mapped(clusters: number, isData: (cluster: number) => boolean): { source: MemorySource; data: Buffer } {
  const data = Buffer.alloc(clusters * CLUSTER);
  const extents: SourceExtent[] = [];
  for (let cluster = 0; cluster < clusters; cluster++) {
    const zero = !isData(cluster);
    if (!zero) randomBytes(CLUSTER).copy(data, cluster * CLUSTER);
    const last = extents[extents.length - 1];
    if (last !== undefined && last.zero === zero)
      extents[extents.length - 1] = { ...last, length: last.length + CLUSTER };
    else extents.push({ offset: cluster * CLUSTER, length: CLUSTER, zero });
  }
  return { source: new MemorySource(data, { extents, extentsPerCall: 3 }), data };
}

describe("the engine's source seam", () => {
  const fixture = useSandboxWithEngines();

  function engineWith(sources: MemorySource[], log: OpenerLog) {
    const { engine } = makeEngine(fixture.sandbox, {
      sourceOpeners: openersWith(sources, log),
      nbdAllow: ["127.0.0.1"],
      qmpRoots: ["/run/test-qmp"],
    });
    return fixture.adopt(engine);
  }

  it("never reads zero extents, stores them as zero clusters and does not throttle them", async () => {
    // 16 MiB with 2 data clusters; at 256 KiB/s reading all of it would take 64 s.
    const clusters = (16 * MiB) / CLUSTER;
    const { source, data } = mapped(clusters, (cluster) => cluster === 3 || cluster === clusters - 1);
    const log: OpenerLog = { calls: [], released: 0 };
    const engine = engineWith([source], log);
    const started = performance.now();
    const status = await engine.start(
      backupSpec({
        backupFile: "sparse.vma",
        devices: [{ name: "drive-scsi0", source: { kind: "nbd", uri: NBD_URI } }],
        speedLimit: 256 * 1024,
      }),
    );
    const end = await waitForEnd(engine, status.uuid);
    const elapsedMs = performance.now() - started;
    expect(end.state).toBe("done");
    // Two data clusters at 256 KiB/s: about half a second, however long the holes.
    expect(elapsedMs).toBeLessThan(8000);
    expect(source.reads).toEqual([
      [3 * CLUSTER, CLUSTER],
      [(clusters - 1) * CLUSTER, CLUSTER],
    ]);
    expect(end.devices[0]).toMatchObject({
      transferredBytes: 16 * MiB,
      zeroBytes: 16 * MiB - 2 * CLUSTER,
      sourceKind: "nbd",
      source: NBD_URI,
    });
    const archive = await parseVma(path.join(fixture.sandbox.out, "sparse.vma"));
    expect(archive.devices[0]?.data.equals(data)).toBe(true);
    expect(source.closed).toBe(1);
    expect(log.released).toBe(1);
  });

  it("opens every device of a kind in one call, in request order, and keeps dev_ids in request order", async () => {
    const a = mapped(2, () => true);
    const b = mapped(3, (cluster) => cluster === 1);
    const c = mapped(1, () => true);
    const log: OpenerLog = { calls: [], released: 0 };
    // The qemu opener runs after the nbd one: it gets the second source.
    const engine = engineWith([a.source, b.source], log);
    const disk = await writeSource(fixture.sandbox, "c.raw", c.data);
    const status = await engine.start(
      backupSpec({
        backupFile: "mixed.vma",
        devices: [
          { name: "n0", source: { kind: "nbd", uri: NBD_URI } },
          { name: "p1", source: { kind: "path", path: disk } },
          { name: "q2", source: { kind: "qemu", qmpSocket: "/run/test-qmp/1.qmp", drive: "drive-scsi0" } },
        ],
      }),
    );
    const end = await waitForEnd(engine, status.uuid);
    expect(end.state).toBe("done");
    expect(log.calls).toEqual([
      { kind: "nbd", indexes: [0], jobId: status.uuid },
      { kind: "qemu", indexes: [2], jobId: status.uuid },
    ]);
    const archive = await parseVma(path.join(fixture.sandbox.out, "mixed.vma"));
    expect(archive.devices.map((device) => [device.devId, device.name])).toEqual([
      [1, "n0"],
      [2, "p1"],
      [3, "q2"],
    ]);
    expect(archive.devices[0]?.data.equals(a.data)).toBe(true);
    expect(archive.devices[1]?.data.equals(c.data)).toBe(true);
    expect(archive.devices[2]?.data.equals(b.data)).toBe(true);
    expect(end.devices.map((device) => device.sourceKind)).toEqual(["nbd", "path", "qemu"]);
    expect(end.devices[2]?.source).toBe("/run/test-qmp/1.qmp:drive-scsi0");
    expect(log.released).toBe(2);
  });

  it("maps an opener's refusal to an EngineError and closes what other openers opened", async () => {
    const opened = mapped(1, () => true).source;
    const log: OpenerLog = { calls: [], released: 0 };
    const { engine } = makeEngine(fixture.sandbox, {
      nbdAllow: ["127.0.0.1"],
      qmpRoots: ["/run/test-qmp"],
      sourceOpeners: (context) => ({
        ...openersWith([opened], log)(context),
        qemu: (request) =>
          Promise.reject(
            new SourceRefusal(
              "not-found",
              "DRIVE_NOT_FOUND",
              `devices[${request.devices[0]?.index}].qemu.drive: no drive "x"`,
              `devices[${request.devices[0]?.index}].qemu.drive`,
            ),
          ),
      }),
    });
    fixture.adopt(engine);
    const refused = await engine
      .start(
        backupSpec({
          devices: [
            { name: "n0", source: { kind: "nbd", uri: NBD_URI } },
            { name: "q1", source: { kind: "qemu", qmpSocket: "/run/test-qmp/1.qmp", drive: "x" } },
          ],
        }),
      )
      .catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(EngineError);
    expect(refused).toMatchObject({
      kind: "not-found",
      reason: "DRIVE_NOT_FOUND",
      field: "devices[1].qemu.drive",
      message: 'devices[1].qemu.drive: no drive "x"',
    });
    expect(opened.closed).toBe(1);
    expect(log.released).toBe(1);
  });

  it("closes the sources and releases the opener when a read fails", async () => {
    // Two chunks of 2 MiB: the second read fails.
    const failing = new MemorySource(Buffer.alloc(4 * MiB, 1), {
      beforeRead: (position) => {
        if (position >= 2 * MiB) throw new Error("connection reset by peer");
      },
    });
    const log: OpenerLog = { calls: [], released: 0 };
    const engine = engineWith([failing], log);
    const status = await engine.start(backupSpec({ devices: [{ name: "n0", source: { kind: "nbd", uri: NBD_URI } }] }));
    const end = await waitForEnd(engine, status.uuid);
    expect(end.state).toBe("error");
    expect(end.errorMessage).toBe(`device n0: read error at offset ${2 * MiB}: connection reset by peer`);
    expect(failing.closed).toBe(1);
    expect(log.released).toBe(1);
  });

  it("shows a live source's scratch bytes in the status while the job runs", async () => {
    let written = 0;
    // Throttled so that the job outlives a scratch poll (once a second).
    const live = new MemorySource(Buffer.alloc(4 * MiB, 1), { scratchBytes: () => written });
    const log: OpenerLog = { calls: [], released: 0 };
    const engine = engineWith([live], log);
    const status = await engine.start(
      backupSpec({
        devices: [{ name: "q0", source: { kind: "qemu", qmpSocket: "/run/test-qmp/1.qmp", drive: "drive-scsi0" } }],
        speedLimit: 2 * MiB,
      }),
    );
    expect(status.devices[0]?.scratchBytes).toBe(0);
    written = 12_345;
    await waitUntil(() => engine.query(status.uuid)?.devices[0]?.scratchBytes === 12_345, 4000);
    expect(engine.query(status.uuid)?.state).toBe("active");
    await engine.cancel(status.uuid);
    expect(log.released).toBe(1);
  });

  it("refuses image, nbd and qemu sources as not wired yet with the default openers", async () => {
    const { engine } = makeEngine(fixture.sandbox, { nbdAllow: ["127.0.0.1"] });
    fixture.adopt(engine);
    const refused = await engine
      .start(backupSpec({ devices: [{ name: "n0", source: { kind: "nbd", uri: NBD_URI } }] }))
      .catch((error: unknown) => error);
    expect(refused).toMatchObject({
      kind: "failed-precondition",
      reason: "SOURCE_KIND_NOT_WIRED",
      field: "devices[0].nbd",
    });
  });
});

describe("job records", () => {
  const status: JobStatus = {
    uuid: "6a2f41a3-c54c-4a8b-b4f5-d1d6c0a2b6e1",
    state: "active",
    errorMessage: "",
    backupFile: "/b/x.vma",
    format: "vma",
    totalBytes: MiB,
    transferredBytes: 0,
    zeroBytes: 0,
    startTime: new Date(1_700_000_000_000),
    speedLimit: 0,
    devices: [
      {
        name: "q",
        devId: 1,
        size: MiB,
        transferredBytes: 0,
        zeroBytes: 0,
        sourceKind: "qemu",
        source: "/run/q.qmp:drive-scsi0",
        scratchBytes: 4096,
      },
    ],
    rate: 0,
    revision: 3,
    updateTime: new Date(1_700_000_000_500),
  };

  it("keep each device's source spec, for cleaning up after a restart", () => {
    const sources = [{ kind: "qemu", qmpSocket: "/run/q.qmp", drive: "drive-scsi0" }] as const;
    const entry = fromStoredJob(toStoredJob(status, { sources: [...sources] }));
    expect(entry.extras.sources).toEqual(sources);
    expect(entry.status.devices).toEqual(status.devices);
  });

  it("read a record from before source kinds as path devices", () => {
    const stored = toStoredJob(status, {});
    const record = stored.record as { status: { devices: Array<Record<string, unknown>> } };
    for (const device of record.status.devices) {
      delete device.sourceKind;
      delete device.source;
      delete device.scratchBytes;
    }
    const entry = fromStoredJob(stored);
    expect(entry.status.devices[0]).toMatchObject({ sourceKind: "path", source: "", scratchBytes: 0 });
    expect(entry.extras.sources).toBeUndefined();
  });

  it("refuse a record with an unknown source kind", () => {
    const stored = toStoredJob(status, { sources: [{ kind: "path", path: "/a" }] });
    (stored.record as { sources: Array<{ kind: string }> }).sources[0]!.kind = "floppy";
    expect(() => fromStoredJob(stored)).toThrow(/sources\[0\]\.kind/);
  });
});
