// `npm run bench`: backs up a disk image with the real daemon and, side by
// side in the same run, copies it with qemu-img and cp; prints medians and
// ratios; then the zero-detection micro-benchmark (bench/zero-bench.ts).
// Size and repetitions: BENCH_SIZE_MIB (1024), BENCH_RUNS (7).
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeAlternatingImage } from "./make-image.js";
import { startBenchService } from "./service.js";
import { formatMiB, formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";
import { benchZeroDetection } from "./zero-bench.js";
import { benchVmaTools } from "./vma-tools.js";
import { benchSparseImage } from "./sparse-image.js";

const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const runs = Number(process.env.BENCH_RUNS ?? 7);
const sizeBytes = sizeMiB * 2 ** 20;

function requireTool(name: string, debianPackage: string): void {
  try {
    execFileSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" });
  } catch {
    throw new Error(`${name} is missing: apt-get install ${debianPackage}`);
  }
}

async function main(): Promise<void> {
  requireTool("qemu-img", "qemu-utils");
  const root = await mkdtemp(join(tmpdir(), "vmabackup-bench-"));
  const sourceRoot = join(root, "images");
  const backupDir = join(root, "backups");
  const copies = join(root, "copies");
  await Promise.all([sourceRoot, backupDir, copies, join(root, "state")].map((dir) => mkdir(dir)));
  const image = join(sourceRoot, "disk.raw");
  console.log(`image: ${sizeMiB} MiB, alternating 1 MiB random / 1 MiB zero; ${runs} runs each, page cache warm`);
  await makeAlternatingImage(image, sizeBytes);

  const service = await startBenchService({ backupDir, sourceRoot, stateDir: join(root, "state") });
  const times = { vmabackup: [] as number[], qemuImg: [] as number[], qemuImgSync: [] as number[], cp: [] as number[] };
  try {
    // Warm the page cache so that every contender reads from memory.
    await timeCommand("cat", [image]);
    const archiveOf = (run: number): string => join(backupDir, `bench-${run}.vma`);
    const contenders: Array<{ times: number[]; run: (run: number) => Promise<number> }> = [
      {
        times: times.qemuImg,
        run: async (run) => {
          const out = join(copies, `qemu-${run}.raw`);
          const seconds = await timeCommand("qemu-img", ["convert", "-f", "raw", "-O", "raw", "-S", "4k", image, out]);
          await rm(out);
          return seconds;
        },
      },
      {
        // qemu-img does not fsync its output; vmabackup does. Same work plus fsync:
        times: times.qemuImgSync,
        run: async (run) => {
          const out = join(copies, `qemu-sync-${run}.raw`);
          const script = `qemu-img convert -f raw -O raw -S 4k '${image}' '${out}' && sync '${out}'`;
          const seconds = await timeCommand("sh", ["-c", script]);
          await rm(out);
          return seconds;
        },
      },
      {
        times: times.cp,
        run: async (run) => {
          const out = join(copies, `cp-${run}.raw`);
          const seconds = await timeCommand("cp", ["--sparse=never", image, out]);
          await rm(out);
          return seconds;
        },
      },
      {
        times: times.vmabackup,
        run: async (run) => {
          const seconds = await service.timeBackup(image, archiveOf(run));
          if (run < runs - 1) await rm(archiveOf(run));
          return seconds;
        },
      },
    ];
    // Each run starts with the next contender, so that none always follows
    // the same neighbour; and each starts with no dirty pages left by the
    // previous one, whose writeback would otherwise slow the next fsync.
    for (let run = 0; run < runs; run++) {
      for (let step = 0; step < contenders.length; step++) {
        const contender = contenders[(run + step) % contenders.length]!;
        await timeCommand("sync", []);
        contender.times.push(await contender.run(run));
      }
    }
    const peakRss = await service.peakRss();
    const base = median(times.qemuImg);
    const rows: Array<[string, number[]]> = [
      ["vmabackup (incl. fsync)", times.vmabackup],
      ["qemu-img convert -S 4k", times.qemuImg],
      ["qemu-img convert + sync", times.qemuImgSync],
      ["cp --sparse=never", times.cp],
    ];
    console.log("\nbackup of the image (median wall time; the fastest run shows how noisy the machine was):");
    for (const [name, samples] of rows) {
      const seconds = median(samples);
      const ratio = (seconds / base).toFixed(2);
      const fastest = formatSeconds(Math.min(...samples));
      console.log(
        `  ${name.padEnd(26)} ${formatSeconds(seconds).padStart(9)}  ${formatRate(sizeBytes, seconds).padStart(10)} ` +
          ` ${ratio}x qemu-img  (fastest ${fastest})`,
      );
    }
    console.log(`  vmabackup daemon peak RSS: ${formatMiB(peakRss)}`);

    await benchVmaTools({
      archive: join(backupDir, `bench-${runs - 1}.vma`),
      workDir: root,
      runs,
      backupSeconds: median(times.vmabackup),
    });

    if (process.env.BENCH_SPARSE !== "0") {
      await benchSparseImage({ service, sourceRoot, backupDir, workDir: root, runs: Math.min(runs, 5) });
    }
  } finally {
    await service.stop();
    await rm(root, { recursive: true, force: true });
  }
  // In this process, after the daemon stopped, so it competes with nothing of ours.
  await benchZeroDetection({ rounds: runs, bytesPerRun: 2 ** 30 });
}

await main();
