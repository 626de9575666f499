// Shared fixtures of the engine tests: a sandbox of real directories, an
// engine on the real VMA driver, and an independent strict VMA parser so that
// what the engine wrote can be checked against the sources byte for byte.
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import type { Logger } from "pino";
import { afterEach, beforeEach, expect } from "vitest";
import { vmaDriver } from "../src/drivers/vma-driver.js";
import type { BackupDriver } from "../src/drivers/driver.js";
import { BackupEngine } from "../src/engine/backup-engine.js";
import type { BackupEngineOptions } from "../src/engine/backup-engine.js";
import { EngineError } from "../src/engine/errors.js";
import type { EngineErrorKind } from "../src/engine/errors.js";
import type { BackupSpec, JobStatus } from "../src/engine/types.js";
import { captureLog } from "./helpers/log-capture.js";
import type { CapturedLog } from "./helpers/log-capture.js";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const CLUSTER = 64 * KiB;
export const BLOCK = 4 * KiB;

export interface Sandbox {
  readonly root: string;
  /** The source root. */
  readonly src: string;
  /** The backup dir. */
  readonly out: string;
  /** The state dir (job database). */
  readonly state: string;
  cleanup(): Promise<void>;
}

export async function makeSandbox(): Promise<Sandbox> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), "vmabackup-engine-"));
  const src = path.join(root, "src");
  const out = path.join(root, "out");
  const state = path.join(root, "state");
  await fs.mkdir(src);
  await fs.mkdir(out);
  await fs.mkdir(state);
  return { root, src, out, state, cleanup: () => fs.rm(root, { recursive: true, force: true }) };
}

/** A logger whose lines land in `logs` (the one log capture of the tests, at level info). */
function captureLogger(): { logger: Logger; logs: CapturedLog } {
  const logs = captureLog("info");
  return { logger: logs.logger, logs };
}

function engineOptions(sandbox: Sandbox, logger: Logger, overrides: Partial<BackupEngineOptions>): BackupEngineOptions {
  return {
    backupDir: sandbox.out,
    sourceRoots: [sandbox.src],
    progressIntervalMs: 50,
    stateDir: sandbox.state,
    drivers: [vmaDriver],
    logger,
    ...overrides,
  };
}

/** An engine through the synchronous constructor (on the sandbox's state dir). */
export function makeEngine(
  sandbox: Sandbox,
  overrides: Partial<BackupEngineOptions> = {},
): { engine: BackupEngine; logs: CapturedLog } {
  const { logger, logs } = captureLogger();
  const engine = new BackupEngine(engineOptions(sandbox, logger, overrides));
  return { engine, logs };
}

/**
 * A state dir of its own, for a second engine running beside the sandbox's:
 * one engine at a time owns a state dir.
 */
export function ownStateDir(sandbox: Sandbox): string {
  return mkdtempSync(path.join(sandbox.root, "state-"));
}

/** An engine through BackupEngine.open, as the server makes it. */
export async function openEngine(
  sandbox: Sandbox,
  overrides: Partial<BackupEngineOptions> = {},
): Promise<{ engine: BackupEngine; logs: CapturedLog }> {
  const { logger, logs } = captureLogger();
  const engine = await BackupEngine.open(engineOptions(sandbox, logger, overrides));
  return { engine, logs };
}

/** The sandbox and engine of the running test; see useEngineSandbox. */
export interface EngineFixture {
  readonly sandbox: Sandbox;
  readonly engine: BackupEngine;
  /** What `engine` logged. */
  readonly logs: CapturedLog;
  /**
   * Shuts the engine down (nothing happens if the test already did) and
   * makes a new one on the same sandbox, with the options given to
   * useEngineSandbox and `overrides` on top. From then on `engine` and
   * `logs` are the new engine's.
   */
  restartEngine(overrides?: Partial<BackupEngineOptions>): Promise<BackupEngine>;
}

export interface SandboxWithEngines {
  /** This test's sandbox. */
  readonly sandbox: Sandbox;
  /** Shuts `engine` down after the test (shutdown is idempotent); returns it. */
  adopt<T extends BackupEngine>(engine: T): T;
}

/**
 * A fresh sandbox per test for tests that open engines themselves (several,
 * or one after another on the same state dir); every engine they adopt is
 * shut down after the test, then the sandbox is removed.
 */
export function useSandboxWithEngines(): SandboxWithEngines {
  let sandbox: Sandbox | undefined;
  let engines: BackupEngine[] = [];
  beforeEach(async () => {
    sandbox = await makeSandbox();
    engines = [];
  });
  afterEach(async () => {
    for (const engine of engines) await engine.shutdown();
    await sandbox?.cleanup();
    sandbox = undefined;
  });
  return {
    get sandbox() {
      if (sandbox === undefined)
        throw new Error("useSandboxWithEngines: the sandbox is only there inside tests and hooks");
      return sandbox;
    },
    adopt(engine) {
      engines.push(engine);
      return engine;
    },
  };
}

/**
 * Gives every test of the calling file or describe block a fresh sandbox
 * with an engine on it (makeEngine with `overrides`): registers a beforeEach
 * that makes them and an afterEach that shuts the engine down and removes the
 * sandbox. Read the fixture's fields inside tests and hooks only.
 *
 * An afterEach registered after this call runs before its cleanup, while the
 * sandbox still exists.
 */
export function useEngineSandbox(overrides: Partial<BackupEngineOptions> = {}): EngineFixture {
  type EngineInSandbox = { sandbox: Sandbox; engine: BackupEngine; logs: CapturedLog };
  let current: EngineInSandbox | undefined;
  const currentOrThrow = (): EngineInSandbox => {
    if (current === undefined) throw new Error("useEngineSandbox: the fixture is only there inside tests and hooks");
    return current;
  };

  beforeEach(async () => {
    const sandbox = await makeSandbox();
    current = { sandbox, ...makeEngine(sandbox, overrides) };
  });

  afterEach(async () => {
    if (current === undefined) return;
    const { sandbox, engine } = current;
    current = undefined;
    await engine.shutdown();
    await sandbox.cleanup();
  });

  return {
    get sandbox() {
      return currentOrThrow().sandbox;
    },
    get engine() {
      return currentOrThrow().engine;
    },
    get logs() {
      return currentOrThrow().logs;
    },
    async restartEngine(moreOverrides = {}) {
      const { sandbox, engine } = currentOrThrow();
      await engine.shutdown();
      current = { sandbox, ...makeEngine(sandbox, { ...overrides, ...moreOverrides }) };
      return current.engine;
    },
  };
}

export function backupSpec(partial: Partial<BackupSpec> = {}): BackupSpec {
  return {
    backupFile: "test.vma",
    format: "vma",
    devices: [],
    configs: [],
    speedLimit: 0,
    ...partial,
  };
}

/** Writes a source file and returns its path. */
export async function writeSource(sandbox: Sandbox, name: string, data: Uint8Array): Promise<string> {
  const file = path.join(sandbox.src, name);
  await fs.writeFile(file, data);
  return file;
}

/**
 * `size` bytes made of 4 KiB blocks that are zero where `isZeroBlock(i)`
 * and random otherwise (a random block that starts with a zero byte is
 * nudged so no random block is all zeros by chance).
 */
export function blockPattern(size: number, isZeroBlock: (block: number) => boolean): Buffer {
  const data = randomBytes(size);
  for (let block = 0; block * BLOCK < size; block++) {
    const start = block * BLOCK;
    if (isZeroBlock(block)) data.fill(0, start, Math.min(size, start + BLOCK));
    else data[start] = 0xa5;
  }
  return data;
}

/** Zero bytes as the engine must count them: in-device bytes of all-zero 4 KiB blocks. */
export function expectedZeroBytes(data: Uint8Array): number {
  const buffer = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let zero = 0;
  for (let start = 0; start < buffer.length; start += BLOCK) {
    const end = Math.min(buffer.length, start + BLOCK);
    if (buffer.subarray(start, end).every((byte) => byte === 0)) zero += end - start;
  }
  return zero;
}

export async function waitForEnd(engine: BackupEngine, uuid: string): Promise<JobStatus> {
  for await (const status of engine.watch(uuid)) {
    if (status.state !== "active") return status;
  }
  throw new Error(`watch of ${uuid} ended without a terminal status`);
}

/** Polls `condition` every 10 ms until true or `timeoutMs` passed. */
export async function waitUntil(condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits (as waitUntil does) until job `uuid` has transferred at least `bytes`. */
export function waitForTransfer(engine: BackupEngine, uuid: string, bytes = 1): Promise<void> {
  return waitUntil(() => (engine.query(uuid)?.transferredBytes ?? 0) >= bytes);
}

/**
 * Starts a backup of a new source `<name>.raw` of `size` bytes (every other
 * 4 KiB block zero) into `<name>.vma`, at `speedLimit` bytes/s (0: unlimited).
 */
export async function startJob(
  fixture: Pick<EngineFixture, "engine" | "sandbox">,
  name: string,
  size: number,
  speedLimit: number,
): Promise<JobStatus> {
  const source = await writeSource(
    fixture.sandbox,
    `${name}.raw`,
    blockPattern(size, (block) => block % 2 === 0),
  );
  return fixture.engine.start(
    backupSpec({
      backupFile: `${name}.vma`,
      devices: [{ name: "d", source: { kind: "path", path: source } }],
      speedLimit,
    }),
  );
}

/** Asserts that `action` throws (or rejects with) an EngineError of this kind and reason. */
export async function expectEngineError(
  action: () => unknown,
  kind: EngineErrorKind,
  reason: string,
  field?: string,
): Promise<EngineError> {
  let caught: unknown;
  try {
    await action();
  } catch (error) {
    caught = error;
  }
  expect(caught, `expected ${reason}`).toBeInstanceOf(EngineError);
  const error = caught as EngineError;
  expect({ kind: error.kind, reason: error.reason }).toEqual({ kind, reason });
  if (field !== undefined) {
    expect(error.field).toBe(field);
    expect(error.message).toContain(field);
  }
  return error;
}

/** A driver that delegates to the VMA driver, with hooks for fault injection. */
export function faultyDriver(hooks: { writeCluster?: (devId: number, clusterNum: number) => void }): BackupDriver {
  return {
    format: vmaDriver.format,
    fileSuffix: vmaDriver.fileSuffix,
    checkPlan: (plan) => vmaDriver.checkPlan(plan),
    openUpload(upload, options) {
      const target = vmaDriver.openUpload(upload, options);
      return {
        get pending() {
          return target.pending;
        },
        get location() {
          return target.location;
        },
        get bytesWritten() {
          return target.bytesWritten;
        },
        registerConfig: (name, data) => target.registerConfig(name, data),
        registerDevice: (name, size) => target.registerDevice(name, size),
        async writeCluster(devId, clusterNum, data, mask) {
          hooks.writeCluster?.(devId, clusterNum);
          return target.writeCluster(devId, clusterNum, data, mask);
        },
        async writeZeroClusters(devId, firstCluster, count) {
          for (let clusterNum = firstCluster; clusterNum < firstCluster + count; clusterNum++) {
            hooks.writeCluster?.(devId, clusterNum);
          }
          return target.writeZeroClusters(devId, firstCluster, count);
        },
        released: () => target.released(),
        completeDevice: (devId) => target.completeDevice(devId),
        close: () => target.close(),
        abort: () => target.abort(),
      };
    },
  };
}

// --- An independent, strict VMA parser (docs/vma-format.md) ---

export interface ParsedVma {
  readonly uuid: string;
  readonly configs: ReadonlyMap<string, Buffer>;
  readonly devices: ReadonlyArray<{ devId: number; name: string; size: number; data: Buffer }>;
}

function md5(data: Uint8Array): string {
  return createHash("md5").update(data).digest("hex");
}

function check(condition: boolean, message: string): void {
  if (!condition) throw new Error(`invalid VMA: ${message}`);
}

/** Parses a whole archive, checking checksums, masks, duplicates and completeness. */
export async function parseVma(file: string): Promise<ParsedVma> {
  const archive = await fs.readFile(file);
  check(archive.subarray(0, 4).equals(Buffer.from("VMA\0", "latin1")), "magic");
  check(archive.readUInt32BE(4) === 1, "version");
  const uuidBytes = archive.subarray(8, 24);
  const headerSize = archive.readUInt32BE(56);
  const blobOffset = archive.readUInt32BE(48);
  const header = Buffer.from(archive.subarray(0, headerSize));
  header.fill(0, 32, 48);
  check(md5(header) === archive.subarray(32, 48).toString("hex"), "header md5");

  const blob = (pointer: number): Buffer => {
    const start = blobOffset + pointer;
    const length = archive.readUInt16LE(start);
    return archive.subarray(start + 2, start + 2 + length);
  };
  const text = (pointer: number): string => {
    const bytes = blob(pointer);
    check(bytes[bytes.length - 1] === 0, "string blob without NUL");
    return bytes.subarray(0, -1).toString("utf8");
  };

  const configs = new Map<string, Buffer>();
  for (let slot = 0; slot < 256; slot++) {
    const namePointer = archive.readUInt32BE(2044 + 4 * slot);
    const dataPointer = archive.readUInt32BE(3068 + 4 * slot);
    if (namePointer !== 0 && dataPointer !== 0) configs.set(text(namePointer), Buffer.from(blob(dataPointer)));
  }

  const devices = new Map<number, { devId: number; name: string; size: number; data: Buffer; seen: Set<number> }>();
  for (let devId = 1; devId <= 254; devId++) {
    const entry = 4096 + 32 * devId;
    const size = Number(archive.readBigUInt64BE(entry + 8));
    const namePointer = archive.readUInt32BE(entry);
    if (size === 0 || namePointer === 0) continue;
    const clusters = Math.ceil(size / CLUSTER);
    const data = Buffer.alloc(clusters * CLUSTER);
    devices.set(devId, { devId, name: text(namePointer), size, data, seen: new Set() });
  }

  let position = headerSize;
  while (position < archive.length) {
    check(archive.length - position >= 512, "short extent header");
    const extent = archive.subarray(position, position + 512);
    check(extent.subarray(0, 4).equals(Buffer.from("VMAE", "latin1")), "extent magic");
    check(extent.readUInt16BE(4) === 0, "extent reserved");
    check(extent.subarray(8, 24).equals(uuidBytes), "extent uuid");
    const copy = Buffer.from(extent);
    copy.fill(0, 24, 40);
    check(md5(copy) === extent.subarray(24, 40).toString("hex"), "extent md5");
    const blockCount = extent.readUInt16BE(6);
    let dataPosition = position + 512;
    let blocks = 0;
    for (let slot = 0; slot < 59; slot++) {
      const info = 40 + 8 * slot;
      const mask = extent.readUInt16BE(info);
      const devId = extent[info + 3] as number;
      const cluster = extent.readUInt32BE(info + 4);
      if (devId === 0) continue;
      const device = devices.get(devId);
      check(device !== undefined, `unknown dev_id ${devId}`);
      if (device === undefined) continue;
      check(cluster * CLUSTER < device.size, `cluster ${cluster} beyond device ${devId}`);
      check(!device.seen.has(cluster), `duplicate cluster ${cluster} of device ${devId}`);
      device.seen.add(cluster);
      for (let block = 0; block < 16; block++) {
        if ((mask & (1 << block)) === 0) continue;
        const deviceOffset = cluster * CLUSTER + block * BLOCK;
        check(deviceOffset < device.size, `mask bit ${block} past the end of device ${devId}`);
        archive.copy(device.data, deviceOffset, dataPosition, dataPosition + BLOCK);
        dataPosition += BLOCK;
        blocks++;
      }
    }
    check(blocks === blockCount, "block_count differs from the masks");
    position = dataPosition;
  }

  const parsed = [...devices.values()].map((device) => {
    const clusters = Math.ceil(device.size / CLUSTER);
    check(device.seen.size === clusters, `device ${device.devId} has ${device.seen.size} of ${clusters} clusters`);
    return { devId: device.devId, name: device.name, size: device.size, data: device.data.subarray(0, device.size) };
  });
  const hex = uuidBytes.toString("hex");
  const uuid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return { uuid, configs, devices: parsed };
}
