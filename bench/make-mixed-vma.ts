// Writes a VMA archive of mixed content for compression measurements: per
// 64 KiB cluster, a third random bytes, a third slices of the system's own
// shared libraries (compressible like a used root disk), a third zeros.
import { randomFillSync, randomUUID } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { parse as parseUuid } from "uuid";
import { CLUSTER_SIZE } from "../src/vma/constants.js";
import { VmaWriter } from "../src/vma/writer.js";

const LIBRARY_DIR = "/usr/lib/x86_64-linux-gnu";
const CORPUS_BYTES = 64 * 2 ** 20;

/** Up to 64 MiB of the system's shared libraries, the compressible part. */
export function loadCorpus(): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (const name of readdirSync(LIBRARY_DIR).sort()) {
    const file = join(LIBRARY_DIR, name);
    const stats = statSync(file, { throwIfNoEntry: false });
    if (stats === undefined || !stats.isFile() || stats.size < 65536) continue;
    const data = readFileSync(file);
    parts.push(data);
    total += data.length;
    if (total >= CORPUS_BYTES) break;
  }
  return Buffer.concat(parts).subarray(0, CORPUS_BYTES);
}

/**
 * Writes a VMA of about `archiveBytes` to `path`: one device half as big
 * again (its third of zeros is not stored), in whole clusters.
 */
export async function makeMixedVma(path: string, archiveBytes: number): Promise<void> {
  const sizeBytes = Math.ceil((archiveBytes * 1.5) / CLUSTER_SIZE) * CLUSTER_SIZE;
  const corpus = loadCorpus();
  const file = await open(path, "wx");
  let position = 0;
  const writer = new VmaWriter(
    {
      async write(chunks) {
        const { bytesWritten } = await file.writev(chunks as Uint8Array[], position);
        position += bytesWritten;
      },
    },
    { uuid: parseUuid(randomUUID()) },
  );
  const devId = writer.addDevice("drive-scsi0", sizeBytes);
  try {
    for (let cluster = 0; cluster < sizeBytes / CLUSTER_SIZE; cluster += 1) {
      const data = Buffer.alloc(CLUSTER_SIZE);
      const kind = cluster % 3;
      if (kind === 0) randomFillSync(data);
      if (kind === 1) corpus.copy(data, 0, (cluster * CLUSTER_SIZE) % (corpus.length - CLUSTER_SIZE));
      await writer.writeCluster(devId, cluster, data, kind === 2 ? 0 : 0xffff);
    }
    writer.completeDevice(devId);
    await writer.finish();
  } finally {
    await file.close();
  }
}

if (process.argv[2] !== undefined) {
  await makeMixedVma(process.argv[2], Number(process.argv[3] ?? 1024) * 2 ** 20);
}
