// `npm run bench`: backs up a disk image with the real daemon and, side by
// side in the same run, copies it with qemu-img and cp; prints medians and
// ratios. Size and repetitions: BENCH_SIZE_MIB (1024), BENCH_RUNS (5).
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeAlternatingImage } from "./make-image.js";
import { startBenchService } from "./service.js";
import { formatMiB, formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";
import { benchVmaTools } from "./vma-tools.js";

const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const runs = Number(process.env.BENCH_RUNS ?? 5);
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
    for (let run = 0; run < runs; run++) {
      const qemuOut = join(copies, `qemu-${run}.raw`);
      times.qemuImg.push(await timeCommand("qemu-img", ["convert", "-f", "raw", "-O", "raw", "-S", "4k", image, qemuOut]));
      await rm(qemuOut);
      // qemu-img does not fsync its output; vmabackup does. Same work plus fsync:
      times.qemuImgSync.push(
        await timeCommand("sh", ["-c", `qemu-img convert -f raw -O raw -S 4k '${image}' '${qemuOut}' && sync '${qemuOut}'`]),
      );
      await rm(qemuOut);
      const cpOut = join(copies, `cp-${run}.raw`);
      times.cp.push(await timeCommand("cp", ["--sparse=never", image, cpOut]));
      await rm(cpOut);
      const archive = join(backupDir, `bench-${run}.vma`);
      times.vmabackup.push(await service.timeBackup(image, archive));
      if (run < runs - 1) await rm(archive);
    }
    const peakRss = await service.peakRss();
    const base = median(times.qemuImg);
    const rows: Array<[string, number]> = [
      ["vmabackup (incl. fsync)", median(times.vmabackup)],
      ["qemu-img convert -S 4k", base],
      ["qemu-img convert + sync", median(times.qemuImgSync)],
      ["cp --sparse=never", median(times.cp)],
    ];
    console.log("\nbackup of the image (median wall time):");
    for (const [name, seconds] of rows) {
      const ratio = (seconds / base).toFixed(2);
      console.log(`  ${name.padEnd(26)} ${formatSeconds(seconds).padStart(9)}  ${formatRate(sizeBytes, seconds).padStart(10)}  ${ratio}x qemu-img`);
    }
    console.log(`  vmabackup daemon peak RSS: ${formatMiB(peakRss)}`);

    await benchVmaTools({ archive: join(backupDir, `bench-${runs - 1}.vma`), workDir: root, runs, backupSeconds: median(times.vmabackup) });
  } finally {
    await service.stop();
    await rm(root, { recursive: true, force: true });
  }
}

await main();
