// Round trips, property-style: real source files are backed up through the
// service's engine (BackupEngine with the VMA driver), then the archive
// (plain, gzip or zstd) is verified and extracted with the reader; every
// extracted disk and config must be byte-identical to its source.
import { execFileSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BackupEngine } from "../src/engine/backup-engine.js";
import { extractArchive } from "../src/vma/extract-archive.js";
import { openArchive } from "../src/vma/open-archive.js";
import { verifyArchive } from "../src/vma/verify-archive.js";
import { backupSpec, blockPattern, makeEngine, makeSandbox, waitForEnd, type Sandbox } from "./engine-helpers.js";

const SECTOR = 512;
const CLUSTER = 65536;
const BLOCK = 4096;

/** A device: its size in 512-byte sectors (the engine's unit) and which 4 KiB blocks are zero. */
const deviceArbitrary = fc.record({
  // 1 sector up to a little over 5 clusters, so most sizes are not multiples of 4 KiB or 64 KiB.
  sectors: fc.oneof(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 1, max: 5 * 128 + 37 })),
  zeroShare: fc.constantFrom(0, 0.25, 0.5, 0.9, 1),
  seed: fc.integer({ min: 0, max: 2 ** 30 }),
});

const configArbitrary = fc.record({
  size: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 200 }), fc.integer({ min: 60000, max: 65535 })),
  fill: fc.integer({ min: 0, max: 255 }),
});

/** A reproducible "random" decision per block, so shrinking keeps the pattern. */
function isZeroBlock(seed: number, share: number): (block: number) => boolean {
  return (block) => (Math.imul(seed ^ (block + 1), 2654435761) >>> 0) / 2 ** 32 < share;
}

let sandbox: Sandbox;
let engine: BackupEngine;
let run = 0;

beforeAll(async () => {
  sandbox = await makeSandbox();
  ({ engine } = makeEngine(sandbox));
});

afterAll(async () => {
  await engine.shutdown();
  await sandbox.cleanup();
});

describe("round trip through the engine and the reader", () => {
  it("extracts every disk and config byte for byte, whatever the shapes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(deviceArbitrary, { minLength: 1, maxLength: 20 }),
        fc.array(configArbitrary, { maxLength: 3 }),
        fc.constantFrom("none", "gzip", "zstd"),
        fc.boolean(),
        async (devices, configs, compression, sparse) => {
          run += 1;
          const sources = devices.map((device, index) => ({
            name: `drive-virtio${index}`,
            data: blockPattern(device.sectors * SECTOR, isZeroBlock(device.seed, device.zeroShare)),
          }));
          const paths = await Promise.all(
            sources.map(async (source) => {
              const path = join(sandbox.src, `run${run}-${source.name}.raw`);
              await writeFile(path, source.data);
              return path;
            }),
          );
          const configFiles = configs.map((config, index) => ({
            name: index === 0 ? "qemu-server.conf" : `extra-${index}.conf`,
            data: Buffer.alloc(config.size, config.fill),
          }));

          const started = await engine.start(
            backupSpec({
              backupFile: `run${run}.vma`,
              devices: sources.map((source, index) => ({
                name: source.name,
                source: { kind: "path" as const, path: paths[index]! },
              })),
              configs: configFiles,
            }),
          );
          const finished = await waitForEnd(engine, started.uuid);
          expect(finished.errorMessage).toBe("");
          expect(finished.state).toBe("done");

          const archivePath = await compressed(finished.backupFile, compression);
          const verified = await verifyArchive((await openArchive(archivePath)).chunks, { allowIncomplete: false });
          expect(verified.problems).toEqual([]);
          expect(verified.ok).toBe(true);
          expect(verified.header!.uuid).toBe(started.uuid);
          expect(
            [...verified.header!.devices.values()].map((device) => [device.devId, device.name, device.size]),
          ).toEqual(sources.map((source, index) => [index + 1, source.name, source.data.length]));
          const clusters = sources.reduce((sum, source) => sum + Math.ceil(source.data.length / CLUSTER), 0);
          expect(verified.clusters).toBe(clusters);
          const nonZeroBlocks = sources.reduce((sum, source) => sum + countNonZeroBlocks(source.data), 0);
          expect(verified.storedBlocks).toBe(nonZeroBlocks);

          const dir = join(sandbox.root, `extract-${run}`);
          const extracted = await extractArchive((await openArchive(archivePath)).chunks, {
            dir,
            sparse,
            allowIncomplete: false,
          });
          expect(extracted.problems).toEqual([]);
          expect(extracted.files).toHaveLength(sources.length + configFiles.length);
          for (const source of sources) {
            const image = await readFile(join(dir, `disk-${source.name}.raw`));
            expect(image.length).toBe(source.data.length);
            expect(image.equals(source.data), source.name).toBe(true);
          }
          for (const config of configFiles) {
            expect((await readFile(join(dir, config.name))).equals(config.data), config.name).toBe(true);
          }
        },
      ),
      { numRuns: 24 },
    );
  });
});

/** The archive as given, or a gzip/zstd copy of it (vzdump compresses the whole stream). */
async function compressed(path: string, compression: "none" | "gzip" | "zstd"): Promise<string> {
  if (compression === "none") return path;
  if (compression === "gzip") {
    await writeFile(`${path}.gz`, gzipSync(await readFile(path), { level: 1 }));
    return `${path}.gz`;
  }
  execFileSync("zstd", ["-q", "-1", path, "-o", `${path}.zst`]);
  return `${path}.zst`;
}

function countNonZeroBlocks(data: Buffer): number {
  const zero = Buffer.alloc(BLOCK);
  let count = 0;
  for (let offset = 0; offset < data.length; offset += BLOCK) {
    const block = data.subarray(offset, offset + BLOCK);
    if (!block.equals(zero.subarray(0, block.length))) count += 1;
  }
  return count;
}
