// A sparse qcow2 (BENCH_SPARSE_GIB of virtual size, default 100, holding
// BENCH_SPARSE_DATA_MIB of random data, default 1024, in 1 MiB pieces spread
// evenly) backed up through the daemon as an `image` source, side by side
// with `qemu-img convert -O raw -S 4k` of it to a sparse file: neither may
// read the holes, so both should take about the time of the data. The
// daemon makes its archive durable (fsync) before DONE, qemu-img does not:
// `qemu-img convert` then `sync` of its output is the like-for-like baseline.
import { randomFillSync } from "node:crypto";
import { mkdir, open, rm } from "node:fs/promises";
import { join } from "node:path";
import { BackupState, ImageFormat } from "../gen/vmabackup/v1/backup_pb.js";
import type { BenchService } from "./service.js";
import { formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";

const MIB = 2 ** 20;

export interface SparseImageBenchOptions {
  readonly service: BenchService;
  /** A source root of the service. */
  readonly sourceRoot: string;
  readonly backupDir: string;
  readonly workDir: string;
  readonly runs: number;
}

/** Writes a raw file with `dataMiB` random MiB spread over `virtualBytes`, then converts it to qcow2. */
async function makeSparseQcow2(workDir: string, image: string, virtualBytes: number, dataMiB: number): Promise<void> {
  const raw = join(workDir, "sparse-source.raw");
  const file = await open(raw, "wx");
  const piece = Buffer.allocUnsafe(MIB);
  const stride = Math.floor(virtualBytes / MIB / dataMiB) * MIB;
  try {
    await file.truncate(virtualBytes);
    for (let index = 0; index < dataMiB; index++) {
      randomFillSync(piece);
      await file.write(piece, 0, MIB, index * stride);
    }
  } finally {
    await file.close();
  }
  await timeCommand("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, image]);
  await rm(raw);
}

async function timeImageBackup(service: BenchService, image: string, backupFile: string): Promise<number> {
  const started = process.hrtime.bigint();
  const { status } = await service.client.backup({
    backupFile,
    devices: [{ name: "drive-scsi0", source: { case: "image", value: { path: image, format: ImageFormat.QCOW2 } } }],
  });
  if (!status) throw new Error("Backup returned no status");
  for await (const { status: update } of service.client.watchBackup({ uuid: status.uuid })) {
    if (update?.state === BackupState.DONE) break;
    if (update && update.state !== BackupState.ACTIVE) {
      throw new Error(`backup ended ${BackupState[update.state]}: ${update.errorMessage}`);
    }
  }
  return Number(process.hrtime.bigint() - started) / 1e9;
}

/** Prints the comparison; returns vmabackup's median time over qemu-img's, without and with sync. */
export async function benchSparseImage(
  options: SparseImageBenchOptions,
): Promise<{ ratio: number; syncRatio: number }> {
  const virtualGiB = Number(process.env.BENCH_SPARSE_GIB ?? 100);
  const dataMiB = Number(process.env.BENCH_SPARSE_DATA_MIB ?? 1024);
  const image = join(options.sourceRoot, "sparse.qcow2");
  const copies = join(options.workDir, "sparse-copies");
  await mkdir(copies, { recursive: true });
  await makeSparseQcow2(options.workDir, image, virtualGiB * 2 ** 30, dataMiB);
  await timeCommand("cat", [image]);

  const times = { vmabackup: [] as number[], qemuImg: [] as number[], qemuImgSync: [] as number[] };
  const convert = ["convert", "-f", "qcow2", "-O", "raw", "-S", "4k", image];
  const contenders: Array<(run: number) => Promise<void>> = [
    async (run) => {
      const out = join(copies, `sparse-${run}.raw`);
      times.qemuImg.push(await timeCommand("qemu-img", [...convert, out]));
      await rm(out);
    },
    async (run) => {
      const out = join(copies, `sparse-sync-${run}.raw`);
      times.qemuImgSync.push(
        await timeCommand("sh", ["-c", `qemu-img ${convert.join(" ")} '${out}' && sync '${out}'`]),
      );
      await rm(out);
    },
    async (run) => {
      const archive = join(options.backupDir, `sparse-${run}.vma`);
      times.vmabackup.push(await timeImageBackup(options.service, image, archive));
      await rm(archive);
    },
  ];
  // Each run starts with the next contender, so that none always follows the same one.
  for (let run = 0; run < options.runs; run++) {
    for (let step = 0; step < contenders.length; step++) {
      await timeCommand("sync", []);
      await contenders[(run + step) % contenders.length]!(run);
    }
  }
  const base = median(times.qemuImg);
  console.log(
    `\nsparse qcow2: ${virtualGiB} GiB virtual, ${dataMiB} MiB of data in 1 MiB pieces (${options.runs} runs each):`,
  );
  for (const [name, samples] of [
    ["vmabackup image source", times.vmabackup],
    ["qemu-img convert -O raw -S 4k", times.qemuImg],
    ["qemu-img convert + sync", times.qemuImgSync],
  ] as const) {
    const seconds = median(samples);
    console.log(
      `  ${name.padEnd(30)} ${formatSeconds(seconds).padStart(9)}  ${formatRate(dataMiB * MIB, seconds).padStart(10)} of data ` +
        ` ${(seconds / base).toFixed(2)}x qemu-img  (fastest ${formatSeconds(Math.min(...samples))})`,
    );
  }
  await rm(image);
  return { ratio: median(times.vmabackup) / base, syncRatio: median(times.vmabackup) / median(times.qemuImgSync) };
}
