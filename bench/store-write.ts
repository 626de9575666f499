// `npm run bench:stores`: the write side on its own, side by side in one run
// on a 1 GiB VMA of mixed content (bench/make-mixed-vma.ts): the archive
// streamed into the local store plain, through the zstd and gzip stages,
// plain-then-`zstd -T0` (compressing after writing, the two-step way), and
// into S3 (s3rver on 127.0.0.1) plain and zstd. Each contender is a child
// process; prints median wall time, MB/s of archive, stored/archive ratio
// and peak RSS (the zstd program's own memory is not in it: it is ~50-70 MiB
// with -T2, measured by bench/compression-options.ts).
// Size and repetitions: BENCH_SIZE_MIB (1024), BENCH_RUNS (3).
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { startS3rver } from "../test/helpers/s3-server.js";
import { makeMixedVma } from "./make-mixed-vma.js";
import { formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";

const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const runs = Number(process.env.BENCH_RUNS ?? 3);
const BUCKET = "bench";
const REPO = resolve(import.meta.dirname, "..");

interface RunResult {
  readonly seconds: number;
  readonly storedBytes: number;
  readonly peakKiB: number;
  readonly key: string;
}

function runOne(args: string[]): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "bench/store-write-one.ts", ...args], {
      cwd: REPO,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (text: string) => {
      out += text;
    });
    child.on("error", reject);
    child.on("close", (code) =>
      code === 0 ? resolvePromise(JSON.parse(out) as RunResult) : reject(new Error(`exit ${code}`)),
    );
  });
}

const root = await mkdtemp(join(tmpdir(), "vmabackup-store-bench-"));
const s3Dir = join(root, "s3");
const localDir = join(root, "local");
await Promise.all([mkdir(s3Dir), mkdir(localDir)]);
const archive = join(root, "mixed.vma");
console.log(
  `archive: ${sizeMiB} MiB of mixed content (1/3 random, 1/3 system libraries, 1/3 zeros); ${runs} runs each`,
);
await makeMixedVma(archive, sizeMiB * 2 ** 20);
const archiveBytes = (await stat(archive)).size;
const s3rver = await startS3rver(s3Dir, BUCKET);
const { port } = s3rver;
const s3Target = `http://127.0.0.1:${port}/${BUCKET}`;

const contenders: Array<{ name: string; run: () => Promise<RunResult> }> = [
  { name: "local .vma", run: () => runOne([archive, "local", "none", localDir]) },
  { name: "local .vma.zst (stage)", run: () => runOne([archive, "local", "zstd", localDir]) },
  {
    name: "local .vma, then zstd -T0",
    run: async () => {
      const plain = await runOne([archive, "local", "none", localDir]);
      const seconds = await timeCommand("zstd", ["-q", "-3", "-T0", "--rm", join(localDir, plain.key)]);
      const storedBytes = (await stat(join(localDir, `${plain.key}.zst`))).size;
      return { ...plain, seconds: plain.seconds + seconds, storedBytes, key: `${plain.key}.zst` };
    },
  },
  { name: "local .vma.gz (stage)", run: () => runOne([archive, "local", "gzip", localDir]) },
  { name: "s3 .vma", run: () => runOne([archive, "s3", "none", s3Target]) },
  { name: "s3 .vma.zst (stage)", run: () => runOne([archive, "s3", "zstd", s3Target]) },
];

try {
  await timeCommand("cat", [archive]);
  for (const contender of contenders) {
    const results: RunResult[] = [];
    for (let run = 0; run < runs; run += 1) {
      const result = await contender.run();
      results.push(result);
      await rm(join(localDir, result.key), { force: true });
    }
    const seconds = median(results.map((result) => result.seconds));
    const ratio = (results[0]?.storedBytes ?? 0) / archiveBytes;
    const peak = Math.max(...results.map((result) => result.peakKiB)) / 1024;
    console.log(
      `${contender.name.padEnd(28)} ${formatSeconds(seconds)}  ${formatRate(archiveBytes, seconds)}  ratio ${ratio.toFixed(3)}  peak RSS ${peak.toFixed(0)} MiB`,
    );
  }
} finally {
  await s3rver.close();
  await rm(root, { recursive: true, force: true });
}
