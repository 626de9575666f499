// How this machine charges for new page-cache pages, printed with the
// machine: on some VMs (this kind of machine is one), memory the guest freed
// a few seconds ago has been handed back to the host, and touching it again
// costs a host fault per page. Writing 512 MiB into a file then takes ~1.5 s
// of kernel time instead of ~0.15 s, for any writer (qemu-img, cp or us),
// depending only on how long ago the pages were freed. Every benchmark here
// that writes files is affected; the probe tells whether that is so on the
// machine of a run, so its absolute figures are read with it.
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { median } from "./stats.js";
import { timeCommand } from "./time-command.js";

export interface PageCacheProbe {
  /** Seconds to write the probe file right after a file of its size was removed. */
  readonly justFreedSeconds: number;
  /** The same after the freed memory lay idle for `idleSeconds`. */
  readonly afterIdleSeconds: number;
  readonly probeMiB: number;
  readonly idleSeconds: number;
}

const PROBE_MIB = 256;
const IDLE_SECONDS = 5;
const ROUNDS = 3;

export async function probePageCache(dir: string): Promise<PageCacheProbe> {
  const file = join(dir, "page-cache-probe");
  const write = (): Promise<number> =>
    timeCommand("dd", ["if=/dev/zero", `of=${file}`, "bs=4M", `count=${PROBE_MIB / 4}`, "status=none"]);
  const justFreed: number[] = [];
  const afterIdle: number[] = [];
  await write();
  for (let round = 0; round < ROUNDS; round++) {
    await rm(file);
    justFreed.push(await write());
    await rm(file);
    await sleep(IDLE_SECONDS * 1000);
    afterIdle.push(await write());
  }
  await rm(file);
  return {
    justFreedSeconds: median(justFreed),
    afterIdleSeconds: median(afterIdle),
    probeMiB: PROBE_MIB,
    idleSeconds: IDLE_SECONDS,
  };
}

export function describePageCacheProbe(probe: PageCacheProbe): string {
  const ratio = probe.afterIdleSeconds / probe.justFreedSeconds;
  const verdict =
    ratio > 2
      ? "freed memory goes back to the host and costs again when touched: absolute figures of writers vary with " +
        "what ran before them; compare the side-by-side ratios"
      : "no such effect here";
  return (
    `page cache: writing ${probe.probeMiB} MiB takes ${probe.justFreedSeconds.toFixed(2)} s into memory just freed, ` +
    `${probe.afterIdleSeconds.toFixed(2)} s into memory freed ${probe.idleSeconds} s before (${ratio.toFixed(1)}x): ${verdict}`
  );
}
