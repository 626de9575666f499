// After a crash (kill -9) of the daemon, the private qemu-storage-daemons it
// started keep running: nothing ends them with their parent. At the next
// start every work directory under the images dir is swept: a daemon still
// serving from it is stopped (only when /proc shows it is the
// qemu-storage-daemon of that directory, so a reused pid is never hit) and
// the directory removed.
import * as fs from "node:fs/promises";
import * as path from "node:path";

const PID_FILE = "qsd.pid";
const GONE_TIMEOUT_MS = 5_000;
const POLL_MS = 20;

async function readPid(workDir: string): Promise<number | undefined> {
  try {
    const pid = Number.parseInt((await fs.readFile(path.join(workDir, PID_FILE), "utf8")).trim(), 10);
    return Number.isSafeInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** True when `pid` runs qemu-storage-daemon with its socket in `workDir` (and is not a zombie). */
async function isDaemonOf(pid: number, workDir: string): Promise<boolean> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
    if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return false;
    const argv = (await fs.readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0");
    return path.basename(argv[0] ?? "") === "qemu-storage-daemon" && argv.some((arg) => arg.includes(`${workDir}/`));
  } catch {
    return false;
  }
}

async function stopDaemon(pid: number, workDir: string): Promise<void> {
  process.kill(pid, "SIGTERM");
  const deadline = Date.now() + GONE_TIMEOUT_MS;
  while (await isDaemonOf(pid, workDir)) {
    if (Date.now() > deadline) {
      process.kill(pid, "SIGKILL");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** Stops the daemons of every work directory in `imagesDir` and removes them; returns how many daemons were stopped. */
export async function sweepLeftoverExports(imagesDir: string): Promise<number> {
  let entries: string[];
  try {
    entries = await fs.readdir(imagesDir);
  } catch {
    return 0;
  }
  let stopped = 0;
  for (const entry of entries) {
    const workDir = path.join(imagesDir, entry);
    const pid = await readPid(workDir);
    if (pid !== undefined && (await isDaemonOf(pid, workDir))) {
      try {
        await stopDaemon(pid, workDir);
        stopped++;
      } catch {
        // Gone already, or not ours to signal: nothing to stop.
      }
    }
    await fs.rm(workDir, { recursive: true, force: true });
  }
  return stopped;
}
