// `npm run bench:nbd`: reads a qemu-nbd export of a raw image (unix socket)
// with the NBD client, the way the engine does (2 MiB reads, a few at once,
// each split into requests of the client's size),
// and with nbdcopy to null: side by side, medians of BENCH_RUNS (5) runs.
// Size: BENCH_SIZE_MIB (1024).
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type NbdSourceOptions, openNbdSource } from "../src/sources/nbd/index.js";
import { makeAlternatingImage } from "./make-image.js";
import { formatRate, formatSeconds, median } from "./stats.js";
import { timeCommand } from "./time-command.js";

const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const runs = Number(process.env.BENCH_RUNS ?? 5);
const MIB = 2 ** 20;

async function waitForSocket(path: string, server: ChildProcess): Promise<void> {
  for (let tries = 0; tries < 250; tries++) {
    if (server.exitCode !== null) throw new Error("qemu-nbd exited");
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ path });
      socket.once("connect", () => resolve(socket.destroy() !== undefined));
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(20);
  }
  throw new Error("qemu-nbd did not start");
}

/** Reads the whole export in `chunk`-byte reads, `parallel` at once; returns seconds. */
async function readWithClient(
  uri: string,
  chunk: number,
  parallel: number,
  options: NbdSourceOptions,
): Promise<number> {
  const source = await openNbdSource(uri, options);
  const started = process.hrtime.bigint();
  let next = 0;
  const worker = async (): Promise<void> => {
    const buffer = Buffer.allocUnsafe(chunk);
    while (next < source.size) {
      const at = next;
      next += chunk;
      const length = Math.min(chunk, source.size - at);
      await source.read(buffer, 0, length, at);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await source.close();
  return seconds;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "vmabackup-nbd-bench-"));
  const image = join(dir, "disk.raw");
  const socket = join(dir, "nbd.sock");
  const size = sizeMiB * MIB;
  await makeAlternatingImage(image, size);
  const server = spawn("qemu-nbd", ["-k", socket, "-t", "--shared=16", "-f", "raw", "-r", "-x", "disk", image], {
    stdio: "ignore",
  });
  try {
    await waitForSocket(socket, server);
    const uri = `nbd+unix:///disk?socket=${socket}`;
    const variants: [string, () => Promise<number>][] = [
      ["client defaults, 2 MiB reads x4", () => readWithClient(uri, 2 * MIB, 4, {})],
      ["client 2 MiB requests, 2 MiB reads x4", () => readWithClient(uri, 2 * MIB, 4, { maxRequestBytes: 2 * MIB })],
      ["nbdcopy to null:", () => timeCommand("nbdcopy", [uri, "null:"])],
      ["nbdcopy --connections=1", () => timeCommand("nbdcopy", ["--connections=1", uri, "null:"])],
    ];
    const times = new Map<string, number[]>(variants.map(([name]) => [name, []]));
    await readWithClient(uri, 2 * MIB, 4, {}); // warm the page cache
    for (let run = 0; run < runs; run++) {
      for (const [name, measure] of variants) times.get(name)!.push(await measure());
    }
    console.log(`qemu-nbd raw export of ${sizeMiB} MiB on a unix socket, ${runs} runs, medians:`);
    for (const [name, values] of times) {
      const seconds = median(values);
      console.log(`  ${name.padEnd(40)} ${formatSeconds(seconds)}  ${formatRate(size, seconds)}`);
    }
  } finally {
    server.kill("SIGTERM");
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
