import { rm } from "node:fs/promises";
import { join } from "node:path";
import { startBenchService } from "./service.js";
const root = "/tmp/perf/a";
const flags = (process.env.FLAGS ?? "").split(" ").filter(Boolean);
const s = await startBenchService({
  backupDir: join(root, "backups"),
  sourceRoot: join(root, "images"),
  stateDir: join(root, "state"),
  nodeOptions: flags,
});
await new Promise((r) => setTimeout(r, 1500));
const idle = await s.rss();
const times = [];
for (let i = 0; i < 3; i++) {
  const out = join(root, `backups/r${i}.vma`);
  times.push((await s.timeBackup(join(root, "images/disk.raw"), out)).toFixed(2));
  await rm(out);
}
console.log(
  `flags=[${flags.join(" ")}] idle ${(idle / 2 ** 20).toFixed(1)} MiB, peak ${((await s.peakRss()) / 2 ** 20).toFixed(1)} MiB, times ${times.join(" ")}`,
);
await s.stop();
