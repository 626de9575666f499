// The archive tools in `npm run bench`: `vmabackup vma verify` and `vma
// extract` (plain and --sparse) of the benchmark archive, each a real child
// process, side by side with `cat ARCHIVE > /dev/null`, the service's own
// backup time, and `qemu-img convert -S 4k` of the backed-up image (which
// writes the same sparse image as `extract --sparse`, in the same page-cache
// state: see bench/page-cache-probe.ts). Prints median wall time, MB/s of
// archive read, and each tool's peak RSS; also the reader alone, in this
// process, without the command's start-up time.
import { spawn } from "node:child_process";
import { rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { openArchive } from "../src/vma/open-archive.js";
import { verifyArchive } from "../src/vma/verify-archive.js";
import { formatMiB, formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";

export interface VmaToolsBenchOptions {
  /** An uncompressed .vma written by the service. */
  readonly archive: string;
  /** The raw image the archive holds: qemu-img writes it out as extract --sparse does. */
  readonly image: string;
  /** Scratch space for extracted images (removed after each run). */
  readonly workDir: string;
  readonly runs: number;
  /** Median time the service took to write the archive, for comparison. */
  readonly backupSeconds: number;
}

interface ToolRun {
  readonly seconds: number;
  /** Peak resident set size of the child, bytes. */
  readonly peakRss: number;
}

const REPO = resolve(import.meta.dirname, "..");
// Loaded into the child before the command: reports its own peak RSS (KiB) on fd 3 at exit.
const PEAK_RSS_HOOK = `data:text/javascript,${encodeURIComponent(
  'import { writeSync } from "node:fs"; process.on("exit", () => writeSync(3, String(process.resourceUsage().maxRSS)));',
)}`;

/** Medians of the figures issue 12 sets targets for. */
export interface VmaToolsFigures {
  readonly archiveBytes: number;
  /** `vma verify`, including start-up. */
  readonly verifySeconds: number;
  /** `vma extract --sparse`, including start-up. */
  readonly sparseExtractSeconds: number;
  /** `qemu-img convert -S 4k` of the image, run next to each sparse extract. */
  readonly qemuImgSeconds: number;
}

export async function benchVmaTools(options: VmaToolsBenchOptions): Promise<VmaToolsFigures> {
  const archiveBytes = (await stat(options.archive)).size;
  // Warm the page cache, as for the backup contenders, after earlier writes settled.
  await timeCommand("sync", []);
  await timeCommand("cat", [options.archive]);

  const cat: number[] = [];
  const inProcess: number[] = [];
  const tools = { list: [] as ToolRun[], verify: [] as ToolRun[], extract: [] as ToolRun[], sparse: [] as ToolRun[] };
  const qemuImg: number[] = [];
  const sparseExtract = async (run: number): Promise<void> => {
    const sparse = join(options.workDir, `extract-sparse-${run}`);
    tools.sparse.push(await runTool(["extract", "--sparse", options.archive, sparse]));
    await removeAndSettle(sparse);
  };
  const qemuImgConvert = async (run: number): Promise<void> => {
    const out = join(options.workDir, `qemu-img-${run}.raw`);
    qemuImg.push(await timeCommand("qemu-img", ["convert", "-f", "raw", "-O", "raw", "-S", "4k", options.image, out]));
    await removeAndSettle(out);
  };
  for (let run = 0; run < options.runs; run++) {
    cat.push(await timeCommand("sh", ["-c", `cat '${options.archive}' > /dev/null`]));
    inProcess.push(await verifyInProcess(options.archive));
    tools.list.push(await runTool(["list", options.archive]));
    tools.verify.push(await runTool(["verify", options.archive]));
    const plain = join(options.workDir, `extract-${run}`);
    tools.extract.push(await runTool(["extract", options.archive, plain]));
    await removeAndSettle(plain);
    // Side by side, in turns: neither always follows the plain extract's freed pages.
    const pair = run % 2 === 0 ? [sparseExtract, qemuImgConvert] : [qemuImgConvert, sparseExtract];
    for (const step of pair) await step(run);
  }

  const base = median(cat);
  console.log(`\narchive tools on the ${formatMiB(archiveBytes)} archive (median wall time, MB/s of archive read):`);
  const row = (name: string, seconds: number, peakRss?: number, readsArchive = true): void => {
    const rss = peakRss === undefined ? "" : `  peak RSS ${formatMiB(peakRss)}`;
    const rate = readsArchive ? formatRate(archiveBytes, seconds) : "-";
    console.log(
      `  ${name.padEnd(34)} ${formatSeconds(seconds).padStart(9)}  ${rate.padStart(10)}  ` +
        `${(seconds / base).toFixed(1).padStart(5)}x cat${rss}`,
    );
  };
  row("cat ARCHIVE > /dev/null", base);
  row("reader alone (verify, in process)", median(inProcess));
  // list reads only the header: its time is the command's start-up.
  row("vmabackup vma list (start-up only)", medianSeconds(tools.list), medianRss(tools.list), false);
  row("vmabackup vma verify", medianSeconds(tools.verify), medianRss(tools.verify));
  row("vmabackup vma extract", medianSeconds(tools.extract), medianRss(tools.extract));
  row("vmabackup vma extract --sparse", medianSeconds(tools.sparse), medianRss(tools.sparse));
  row("qemu-img convert -S 4k of the image", median(qemuImg));
  row("service backup (for comparison)", options.backupSeconds);
  const list = (values: readonly number[]): string => values.map((value) => value.toFixed(2)).join(" ");
  console.log(
    `  each run, extract --sparse: ${list(tools.sparse.map((run) => run.seconds))} s; ` +
      `qemu-img convert: ${list(qemuImg)} s`,
  );
  const startup = medianSeconds(tools.list);
  console.log(
    `  verify without start-up: ${formatRate(archiveBytes, medianSeconds(tools.verify) - startup)}; ` +
      `extract without start-up: ${formatRate(archiveBytes, medianSeconds(tools.extract) - startup)}; ` +
      `extract --sparse without start-up: ${formatRate(archiveBytes, medianSeconds(tools.sparse) - startup)}`,
  );
  return {
    archiveBytes,
    verifySeconds: medianSeconds(tools.verify),
    sparseExtractSeconds: medianSeconds(tools.sparse),
    qemuImgSeconds: median(qemuImg),
  };
}

/**
 * Removes an extracted image and waits until the disk settles: the
 * writeback of a gigabyte just written would otherwise run during the next
 * contender's time (on this machine it slowed a 0.14 s start-up to 0.4 s).
 */
async function removeAndSettle(path: string): Promise<void> {
  await rm(path, { recursive: true });
  await timeCommand("sync", []);
}

/** Seconds for the strict reader to verify the archive in this process (no process start-up). */
async function verifyInProcess(archive: string): Promise<number> {
  const started = process.hrtime.bigint();
  const verdict = await verifyArchive((await openArchive(archive)).chunks, { allowIncomplete: false });
  if (!verdict.ok) throw new Error(`the benchmark archive is invalid: ${verdict.problems[0]?.message}`);
  return Number(process.hrtime.bigint() - started) / 1e9;
}

/** Runs `vmabackup vma ...` as a child process; fails unless it exits 0. */
function runTool(args: readonly string[]): Promise<ToolRun> {
  return new Promise((resolvePromise, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(process.execPath, ["--import", PEAK_RSS_HOOK, "bin/vmabackup.js", "vma", ...args], {
      cwd: REPO,
      stdio: ["ignore", "ignore", "inherit", "pipe"],
    });
    let report = "";
    const rssPipe = child.stdio[3];
    rssPipe?.on("data", (chunk: Buffer) => (report += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0) reject(new Error(`vmabackup vma ${args.join(" ")} exited ${code}`));
      else resolvePromise({ seconds, peakRss: Number(report) * 1024 });
    });
  });
}

function medianSeconds(runs: readonly ToolRun[]): number {
  return median(runs.map((run) => run.seconds));
}

function medianRss(runs: readonly ToolRun[]): number {
  return median(runs.map((run) => run.peakRss));
}
