// Writes the benchmark disk image: alternating 1 MiB of random data and
// 1 MiB of zeros, written out in full (not sparse), like a half-used disk.
import { randomFillSync } from "node:crypto";
import { open } from "node:fs/promises";

const MIB = 2 ** 20;

export async function makeAlternatingImage(path: string, sizeBytes: number): Promise<void> {
  const random = Buffer.allocUnsafe(MIB);
  const zeros = Buffer.alloc(MIB);
  const file = await open(path, "wx");
  try {
    for (let offset = 0; offset < sizeBytes; offset += MIB) {
      const useRandom = (offset / MIB) % 2 === 0;
      if (useRandom) randomFillSync(random);
      const chunk = useRandom ? random : zeros;
      await file.write(chunk, 0, Math.min(MIB, sizeBytes - offset), offset);
    }
    await file.sync();
  } finally {
    await file.close();
  }
}
