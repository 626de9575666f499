// `npm run bench:stores-daemon`: whole backups through the daemon (a real
// `vmabackup serve` child, dist/), side by side in one run on a raw image of
// mixed content (per 64 KiB cluster: random bytes, slices of the system's
// shared libraries, zeros): `.vma.zst` written by the daemon's zstd stage,
// plain `.vma` followed by `zstd -T0` (what vzdump's pipe replaces), plain
// `.vma`, and the same to an S3 target (s3rver on 127.0.0.1). One daemon per
// run, so its peak RSS (VmHWM) is that run's. Prints median wall time, MB/s
// of source, stored size / plain archive size, and the daemon's peak RSS
// (the zstd program's own memory is not in it).
// Size and repetitions: BENCH_SIZE_MIB (1024), BENCH_RUNS (3).
import { randomFillSync } from "node:crypto";
import { mkdir, mkdtemp, open, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { startS3rver, writeS3rverCredentials } from "../test/helpers/s3-server.js";
import { listeningAddress, runServe, serveArgs } from "../test/helpers/serve-process.js";
import { loadCorpus } from "./make-mixed-vma.js";
import { formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";

const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const runs = Number(process.env.BENCH_RUNS ?? 3);
const BUCKET = "bench";
const CLUSTER = 64 * 1024;

interface RunResult {
  readonly seconds: number;
  readonly storedBytes: number;
  readonly peakKiB: number;
}

/** A raw image of `bytes`: per cluster, random, library bytes or zeros in turn. */
async function makeMixedImage(path: string, bytes: number): Promise<void> {
  const corpus = loadCorpus();
  const file = await open(path, "wx");
  try {
    const chunk = Buffer.alloc(16 * 2 ** 20);
    for (let offset = 0; offset < bytes; offset += chunk.length) {
      chunk.fill(0);
      for (let at = 0; at < chunk.length; at += CLUSTER) {
        const cluster = (offset + at) / CLUSTER;
        const slice = chunk.subarray(at, at + CLUSTER);
        if (cluster % 3 === 0) randomFillSync(slice);
        if (cluster % 3 === 1) corpus.copy(slice, 0, (cluster * CLUSTER) % (corpus.length - CLUSTER));
      }
      await file.write(chunk, 0, Math.min(chunk.length, bytes - offset), offset);
    }
  } finally {
    await file.close();
  }
}

/** The daemon's peak RSS in KiB. */
async function peakKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

const root = await mkdtemp(join(tmpdir(), "vmabackup-stores-daemon-bench-"));
const dirs = { backupDir: join(root, "backups"), sourceRoot: join(root, "images"), stateDir: join(root, "state") };
const s3Dir = join(root, "s3");
await Promise.all([...Object.values(dirs), s3Dir].map((dir) => mkdir(dir)));
const credentials = join(root, "credentials");
await writeS3rverCredentials(credentials);
const image = join(dirs.sourceRoot, "disk.raw");
console.log(`image: ${sizeMiB} MiB raw (1/3 random, 1/3 system libraries, 1/3 zeros); ${runs} runs each`);
await makeMixedImage(image, sizeMiB * 2 ** 20);
const s3rver = await startS3rver(s3Dir, BUCKET);
const { port } = s3rver;

let sequence = 0;

/** One backup through a fresh daemon; `after` runs on the archive before the clock stops. */
async function backup(name: string, target: string, after?: (file: string) => Promise<string>): Promise<RunResult> {
  sequence += 1;
  const file = name.replace("#", String(sequence));
  const serve = runServe([
    ...serveArgs(dirs),
    "--target",
    `s3=s3://${BUCKET}/bench`,
    "--s3-endpoint",
    `http://127.0.0.1:${port}`,
    "--s3-path-style",
    "--s3-credentials",
    credentials,
  ]);
  const address = await listeningAddress(serve);
  const client = createClient(BackupService, address);
  try {
    const started = process.hrtime.bigint();
    const status = (await client.backup({ backupFile: file, target, devices: [{ name: "drive-scsi0", path: image }] }))
      .status!;
    let end = status;
    for await (const message of client.watchBackup({ uuid: status.uuid })) {
      if (message.status !== undefined) end = message.status;
    }
    if (end.state !== BackupState.DONE) throw new Error(`backup ended ${end.state}: ${end.errorMessage}`);
    let storedBytes = Number(end.writtenBytes);
    if (after !== undefined) storedBytes = (await stat(await after(join(dirs.backupDir, file)))).size;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const peak = await peakKiB(serve.child.pid!);
    await client.deleteBackup({ uuid: status.uuid, deleteArchive: true });
    return { seconds, storedBytes, peakKiB: peak };
  } finally {
    client.close();
    await serve.kill();
  }
}

const contenders: Array<{ name: string; run: () => Promise<RunResult> }> = [
  { name: "local .vma", run: () => backup("plain-#.vma", "") },
  { name: "local .vma.zst (daemon)", run: () => backup("zst-#.vma.zst", "") },
  {
    name: "local .vma, then zstd -T0",
    run: () =>
      backup("two-step-#.vma", "", async (file) => {
        await timeCommand("zstd", ["-q", "-3", "-T0", "-f", file]);
        await rm(file);
        return `${file}.zst`;
      }),
  },
  { name: "s3 .vma", run: () => backup("plain-#.vma", "s3") },
  { name: "s3 .vma.zst (daemon)", run: () => backup("zst-#.vma.zst", "s3") },
];

try {
  const sourceBytes = sizeMiB * 2 ** 20;
  let plainArchiveBytes = 0;
  for (const contender of contenders) {
    const results: RunResult[] = [];
    for (let run = 0; run < runs; run += 1) results.push(await contender.run());
    if (contender.name === "local .vma") plainArchiveBytes = results[0]?.storedBytes ?? 0;
    const seconds = median(results.map((result) => result.seconds));
    const ratio = plainArchiveBytes === 0 ? 0 : median(results.map((result) => result.storedBytes)) / plainArchiveBytes;
    const peak = Math.max(...results.map((result) => result.peakKiB)) / 1024;
    console.log(
      `${contender.name.padEnd(28)} ${formatSeconds(seconds)}  ${formatRate(sourceBytes, seconds)} of source  ratio ${ratio.toFixed(3)}  daemon peak RSS ${peak.toFixed(0)} MiB`,
    );
  }
} finally {
  await s3rver.close();
  await rm(root, { recursive: true, force: true });
}
