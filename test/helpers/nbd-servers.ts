// Real NBD servers for tests: nbdkit and qemu-nbd on unix sockets in a temp
// dir, started fresh, ready when they accept a connection, killed on stop().

import { type ChildProcess, spawn } from "node:child_process";
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface NbdServerProcess {
  readonly socketPath: string;
  /** nbd+unix URI of an export of this server. */
  uri(exportName?: string): string;
  stop(): Promise<void>;
}

let serial = 0;

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path: socketPath });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function startServer(command: string, args: readonly string[], socketPath: string): Promise<NbdServerProcess> {
  const child: ChildProcess = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let running = true;
  void exited.then(() => {
    running = false;
  });
  const stop = async (): Promise<void> => {
    if (!running) return;
    child.kill("SIGTERM");
    const killer = setTimeout(() => child.kill("SIGKILL"), 2000);
    await exited;
    clearTimeout(killer);
  };
  const deadline = Date.now() + 5000;
  while (!(await canConnect(socketPath))) {
    if (!running || Date.now() > deadline) {
      await stop();
      throw new Error(`${command} ${args.join(" ")} did not start: ${stderr}`);
    }
    await sleep(20);
  }
  return {
    socketPath,
    uri: (exportName = "") => `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socketPath}`,
    stop,
  };
}

/** nbdkit in the foreground on a fresh socket in `dir`: startNbdkit(dir, ["memory", "1M"]). */
export function startNbdkit(dir: string, args: readonly string[]): Promise<NbdServerProcess> {
  const socketPath = join(dir, `nbdkit-${process.pid}-${serial++}.sock`);
  return startServer("nbdkit", ["-U", socketPath, "-f", "--exit-with-parent", ...args], socketPath);
}

/** qemu-nbd serving many clients on a fresh socket in `dir`: startQemuNbd(dir, ["-f", "raw", "-r", file]). */
export function startQemuNbd(dir: string, args: readonly string[]): Promise<NbdServerProcess> {
  const socketPath = join(dir, `qemu-nbd-${process.pid}-${serial++}.sock`);
  return startServer("qemu-nbd", ["-k", socketPath, "--persistent", "--shared=8", ...args], socketPath);
}
