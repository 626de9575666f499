// `npm run bench`: every figure of issue 12 with its baseline, in one run.
// First the machine (and how it charges for new page-cache pages); then
// backups of a disk image by the real daemon side by side with qemu-img, cp
// and dd copying an archive durably (medians and ratios) and the daemon's
// peak RSS; the peak RSS again for a large image; the archive tools (vma
// verify and extract, start-up included, extract beside qemu-img); the
// watchers curve (bench/watchers.ts); the zero-detection micro-benchmark
// (bench/zero-bench.ts); and a summary against the targets.
// Knobs: BENCH_SIZE_MIB (1024), BENCH_RUNS (7), BENCH_LARGE_MIB (8192; 0
// skips the large image, which takes a minute or two to write and back up),
// BENCH_WATCHERS ("100,1000,5000,10000"), BENCH_WATCH_ROUNDS (20).
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { makeAlternatingImage } from "./make-image.js";
import { describePageCacheProbe, probePageCache } from "./page-cache-probe.js";
import { startBenchService } from "./service.js";
import { formatMiB, formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";
import { benchVmaTools } from "./vma-tools.js";
import { benchSparseImage } from "./sparse-image.js";
import { benchWatchers } from "./watchers.js";
import { benchZeroDetection } from "./zero-bench.js";

const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const runs = Number(process.env.BENCH_RUNS ?? 7);
const largeMiB = Number(process.env.BENCH_LARGE_MIB ?? 8192);
const watcherLevels = (process.env.BENCH_WATCHERS ?? "100,1000,5000,10000").split(",").map(Number);
const watchRounds = Number(process.env.BENCH_WATCH_ROUNDS ?? 20);
const sizeBytes = sizeMiB * 2 ** 20;

/** One line per figure of the summary: what was measured, against its target. */
const summary: string[] = [];

function printMachine(): void {
  const cores = cpus();
  const load = loadavg()
    .map((value) => value.toFixed(2))
    .join(", ");
  console.log(
    `machine: ${cores.length} cores, ${cores[0]?.model ?? "unknown CPU"}, ${formatMiB(totalmem())} memory; ` +
      `load average at start ${load}; Node ${process.version}`,
  );
}

/** Peak RSS of a fresh daemon over one backup of a `mib` MiB image (same pattern). */
async function largeImagePeakRss(root: string, mib: number): Promise<number> {
  const dir = join(root, "large");
  await Promise.all(["images", "backups", "state"].map((name) => mkdir(join(dir, name), { recursive: true })));
  const image = join(dir, "images", "large.raw");
  await makeAlternatingImage(image, mib * 2 ** 20);
  const service = await startBenchService({
    backupDir: join(dir, "backups"),
    sourceRoot: join(dir, "images"),
    stateDir: join(dir, "state"),
  });
  try {
    const seconds = await service.timeBackup(image, join(dir, "backups", "large.vma"));
    const peak = await service.peakRss();
    console.log(
      `\nlarge image: ${mib} MiB backed up in ${formatSeconds(seconds)} (one run); daemon peak RSS ${formatMiB(peak)}`,
    );
    return peak;
  } finally {
    await service.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

function requireTool(name: string, debianPackage: string): void {
  try {
    execFileSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" });
  } catch {
    throw new Error(`${name} is missing: apt-get install ${debianPackage}`);
  }
}

async function main(): Promise<void> {
  printMachine();
  requireTool("qemu-img", "qemu-utils");
  const root = await mkdtemp(join(tmpdir(), "vmabackup-bench-"));
  console.log(describePageCacheProbe(await probePageCache(root)));
  const sourceRoot = join(root, "images");
  const backupDir = join(root, "backups");
  const copies = join(root, "copies");
  await Promise.all([sourceRoot, backupDir, copies, join(root, "state")].map((dir) => mkdir(dir)));
  const image = join(sourceRoot, "disk.raw");
  console.log(`image: ${sizeMiB} MiB, alternating 1 MiB random / 1 MiB zero; ${runs} runs each, page cache warm`);
  await makeAlternatingImage(image, sizeBytes);

  const service = await startBenchService({ backupDir, sourceRoot, stateDir: join(root, "state") });
  const times = {
    vmabackup: [] as number[],
    qemuImg: [] as number[],
    qemuImgSync: [] as number[],
    cp: [] as number[],
    ddArchive: [] as number[],
  };
  try {
    // Warm the page cache so that every contender reads from memory.
    await timeCommand("cat", [image]);
    // One untimed backup: its archive is what dd copies below.
    const warmUpArchive = join(backupDir, "warm-up.vma");
    await service.timeBackup(image, warmUpArchive);
    const archiveBytes = (await stat(warmUpArchive)).size;
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
        // The disk's floor: the archive's bytes made durable, nothing read or
        // computed. A backup cannot end sooner than its archive is on disk.
        times: times.ddArchive,
        run: async (run) => {
          const out = join(copies, `dd-${run}.vma`);
          const args = [`if=${warmUpArchive}`, `of=${out}`, "bs=4M", "conv=fdatasync", "status=none"];
          const seconds = await timeCommand("dd", args);
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
    // Rates are of the bytes each contender reads: the image, or for dd the archive.
    const rows: Array<[string, number[], number]> = [
      ["vmabackup (incl. fsync)", times.vmabackup, sizeBytes],
      ["qemu-img convert -S 4k", times.qemuImg, sizeBytes],
      ["qemu-img convert + sync", times.qemuImgSync, sizeBytes],
      ["cp --sparse=never", times.cp, sizeBytes],
      ["dd of the archive, fdatasync", times.ddArchive, archiveBytes],
    ];
    console.log("\nbackup of the image (median wall time; the fastest run shows how noisy the machine was):");
    for (const [name, samples, bytes] of rows) {
      const seconds = median(samples);
      const ratio = (seconds / base).toFixed(2);
      const fastest = formatSeconds(Math.min(...samples));
      console.log(
        `  ${name.padEnd(29)} ${formatSeconds(seconds).padStart(9)}  ${formatRate(bytes, seconds).padStart(10)} ` +
          ` ${ratio}x qemu-img  (fastest ${fastest})`,
      );
    }
    for (const [name, samples] of rows) {
      console.log(`  each run, ${name}: ${samples.map((seconds) => seconds.toFixed(2)).join(" ")} s`);
    }
    console.log(`  vmabackup daemon peak RSS: ${formatMiB(peakRss)}`);
    const backup = median(times.vmabackup);
    summary.push(
      `backup ${sizeMiB} MiB vs qemu-img convert -S 4k + sync  ${(backup / median(times.qemuImgSync)).toFixed(2)}x` +
        `  (target <= 1.0x; ${formatSeconds(backup)} vs ${formatSeconds(median(times.qemuImgSync))})`,
      `backup ${sizeMiB} MiB vs qemu-img convert -S 4k         ${(backup / base).toFixed(2)}x` +
        `  (target <= 1.5x; ${formatSeconds(backup)} vs ${formatSeconds(base)})`,
      `backup ${sizeMiB} MiB vs dd of its archive + fdatasync  ${(backup / median(times.ddArchive)).toFixed(2)}x` +
        `  (the disk's floor, no target; ${formatSeconds(median(times.ddArchive))})`,
      `daemon peak RSS, ${sizeMiB} MiB image                  ${formatMiB(peakRss)}  (target < 100 MiB)`,
    );

    const tools = await benchVmaTools({
      archive: join(backupDir, `bench-${runs - 1}.vma`),
      image,
      workDir: root,
      runs,
      backupSeconds: backup,
    });
    summary.push(
      `vma verify incl. start-up                      ${formatRate(tools.archiveBytes, tools.verifySeconds)}` +
        `  (target >= 1500 MB/s)`,
      `vma extract --sparse incl. start-up            ${formatRate(tools.archiveBytes, tools.sparseExtractSeconds)}` +
        `  (target >= 1000 MB/s; ${(tools.sparseExtractSeconds / tools.qemuImgSeconds).toFixed(2)}x qemu-img ` +
        `convert -S 4k writing the same image)`,
    );

    if (process.env.BENCH_SPARSE !== "0") {
      const sparse = await benchSparseImage({ service, sourceRoot, backupDir, workDir: root, runs: Math.min(runs, 5) });
      summary.push(
        `sparse qcow2 image source vs qemu-img convert  ${sparse.ratio.toFixed(2)}x  (issue 10: <= 1.5x; ` +
          `${sparse.syncRatio.toFixed(2)}x qemu-img convert + sync)`,
      );
    }
  } finally {
    await service.stop();
  }
  try {
    if (largeMiB > 0) {
      const peak = await largeImagePeakRss(root, largeMiB);
      summary.push(`daemon peak RSS, ${largeMiB} MiB image                  ${formatMiB(peak)}  (target < 100 MiB)`);
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }

  const watchers = await benchWatchers({ levels: watcherLevels, rounds: watchRounds });
  const most = watchers.levels.at(-1);
  const thousand = watchers.levels.find((level) => level.watchers === 1000);
  if (most !== undefined) {
    summary.push(
      `daemon RSS with ${most.watchers} idle watchers          ${formatMiB(most.rss)}  (target < 400 MiB at 10000)`,
    );
    summary.push(
      `daemon peak RSS, watchers benchmark         ${formatMiB(watchers.peakRss)}  (opening, ${watchRounds + 1} changes ` +
        `a level, closing; target < 400 MiB)`,
    );
  }
  if (thousand !== undefined) {
    summary.push(
      `status change to 1000 watchers, p99          ${thousand.p99Ms.toFixed(1)} ms  (target < 50 ms; ` +
        `the first after opening: all in ${thousand.firstMaxMs.toFixed(1)} ms)`,
    );
  }

  // In this process, after the daemons stopped, so it competes with nothing of ours.
  await benchZeroDetection({ rounds: runs, bytesPerRun: 2 ** 30 });

  console.log(`\nsummary (issue 12 targets; medians; load average now ${loadavg()[0]?.toFixed(2)}):`);
  for (const line of summary) console.log(`  ${line}`);
}

await main();
