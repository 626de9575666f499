// Measures the ways to compress an archive stream on this machine: Node's
// zlib zstd with and without worker threads, the zstd program (as vzdump
// pipes through it), gzip via zlib and via the gzip/pigz programs. Each
// contender is a child process reading ARCHIVE and writing the compressed
// bytes to a file; prints wall time, MB/s, CPU seconds (user + system, of
// the whole process tree: on a busy shared machine the steadier figure),
// ratio and peak RSS.
// Usage: npm run bench:compression [-- ARCHIVE [RUNS]] (default: a 1 GiB mixed VMA, 3 runs)
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeMixedVma } from "./make-mixed-vma.js";
import { formatRate, formatSeconds, median } from "./stats.js";

interface Contender {
  readonly name: string;
  /** Shell command; $IN and $OUT are the archive and the output file. */
  readonly command: string;
}

const runs = Number(process.argv[3] ?? 3);
/** The archive to compress: the argument, or a mixed VMA of BENCH_SIZE_MIB (1024) made in a temp dir. */
async function inputArchive(): Promise<{ archive: string; cleanUp(): Promise<void> }> {
  const given = process.argv[2];
  if (given !== undefined) return { archive: given, cleanUp: async () => {} };
  const root = await mkdtemp(join(tmpdir(), "vmabackup-compression-"));
  const archive = join(root, "mixed.vma");
  await makeMixedVma(archive, Number(process.env.BENCH_SIZE_MIB ?? 1024) * 2 ** 20);
  return { archive, cleanUp: () => rm(root, { recursive: true, force: true }) };
}
const { archive, cleanUp } = await inputArchive();

const NODE = process.execPath;
/** A node one-liner piping IN through a zlib stream into OUT, then printing its peak RSS (KiB) on stderr. */
function zlibScript(factory: string): string {
  const script = `const z=require("zlib"),fs=require("fs"),{pipeline}=require("stream/promises");pipeline(fs.createReadStream(process.argv[1],{highWaterMark:4<<20}),${factory},fs.createWriteStream(process.argv[2])).then(()=>process.stderr.write("RSS "+process.resourceUsage().maxRSS+"\\n"))`;
  return `${NODE} -e '${script}' "$IN" "$OUT"`;
}

const contenders: Contender[] = [
  {
    name: "zlib zstd -3, 0 workers",
    command: zlibScript("z.createZstdCompress({params:{[z.constants.ZSTD_c_compressionLevel]:3}})"),
  },
  {
    name: "zlib zstd -3, 2 workers",
    command: zlibScript(
      "z.createZstdCompress({params:{[z.constants.ZSTD_c_compressionLevel]:3,[z.constants.ZSTD_c_nbWorkers]:2}})",
    ),
  },
  { name: "zstd -3 -T0 (program)", command: 'zstd -q -3 -T0 -c < "$IN" > "$OUT"' },
  { name: "zstd -3 -T2 (program)", command: 'zstd -q -3 -T2 -c < "$IN" > "$OUT"' },
  { name: "zstd -3 -T1 (program)", command: 'zstd -q -3 -T1 -c < "$IN" > "$OUT"' },
  { name: "zlib gzip -6", command: zlibScript("z.createGzip({level:6})") },
  { name: "zlib gzip -1", command: zlibScript("z.createGzip({level:1})") },
  { name: "gzip -6 (program)", command: 'gzip -6 -c < "$IN" > "$OUT"' },
];
if (spawnSync("sh", ["-c", "command -v pigz"]).status === 0) {
  contenders.push({ name: "pigz -6 -p2 (program)", command: 'pigz -6 -p 2 -c < "$IN" > "$OUT"' });
}

/** Runs `command`: wall seconds and peak RSS. */
function timeShell(command: string, out: string): Promise<{ seconds: number; cpuSeconds: number; peakKiB: number }> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    // GNU time reports the peak RSS of the command's process tree (largest process), in KiB.
    const child = spawn("/usr/bin/time", ["-f", "RSS %M CPU %U %S", "sh", "-c", command], {
      env: { ...process.env, IN: archive, OUT: out },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code !== 0) return reject(new Error(`${command} exited ${code}: ${stderr}`));
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      const reported = [...stderr.matchAll(/RSS (\d+)/g)].map((match) => Number(match[1]));
      const cpu = /CPU ([\d.]+) ([\d.]+)/.exec(stderr);
      const cpuSeconds = cpu === null ? Number.NaN : Number(cpu[1]) + Number(cpu[2]);
      resolve({ seconds, cpuSeconds, peakKiB: Math.max(0, ...reported) });
    });
  });
}

const inputBytes = (await stat(archive)).size;
const out = `${archive}.bench-out`;
console.log(`input ${(inputBytes / 2 ** 20).toFixed(0)} MiB, ${runs} runs each, medians`);
for (const contender of contenders) {
  const seconds: number[] = [];
  const cpuSeconds: number[] = [];
  let peak = 0;
  let outBytes = 0;
  let failure: string | undefined;
  for (let run = 0; run < runs && failure === undefined; run += 1) {
    await rm(out, { force: true });
    const result = await timeShell(contender.command, out).catch((error: Error) => {
      failure = /Error \[?\w*\]?:? ?.*$/m.exec(error.message)?.[0] ?? error.message.split("\n")[0];
      return undefined;
    });
    if (result === undefined) break;
    seconds.push(result.seconds);
    cpuSeconds.push(result.cpuSeconds);
    peak = Math.max(peak, result.peakKiB);
    outBytes = (await stat(out)).size;
  }
  if (failure !== undefined) {
    console.log(`${contender.name.padEnd(26)} failed: ${failure}`);
    continue;
  }
  const wall = median(seconds);
  console.log(
    `${contender.name.padEnd(26)} ${formatSeconds(wall)}  ${formatRate(inputBytes, wall)}  CPU ${median(cpuSeconds).toFixed(1)} s  ratio ${(outBytes / inputBytes).toFixed(3)}  peak RSS ${(peak / 1024).toFixed(0)} MiB`,
  );
}
await rm(out, { force: true });
await cleanUp();
