// Real NBD servers for tests: nbdkit and qemu-nbd on unix sockets in a temp
// dir (or nbdkit on TCP 127.0.0.1), started fresh, ready when they accept a
// connection, killed on stop().

import { type ChildProcess, spawn } from "node:child_process";
import { type AddressInfo, connect, createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface NbdServerProcess {
  /** URI of an export of this server (nbd+unix:// or nbd://). */
  uri(exportName?: string): string;
  stop(): Promise<void>;
}

let serial = 0;

type Endpoint = { readonly path: string } | { readonly host: string; readonly port: number };

function canConnect(endpoint: Endpoint): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(endpoint);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function startServer(command: string, args: readonly string[], endpoint: Endpoint): Promise<NbdServerProcess> {
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
  while (!(await canConnect(endpoint))) {
    if (!running || Date.now() > deadline) {
      await stop();
      throw new Error(`${command} ${args.join(" ")} did not start: ${stderr}`);
    }
    await sleep(20);
  }
  const uri =
    "path" in endpoint
      ? (exportName = "") => `nbd+unix:///${encodeURIComponent(exportName)}?socket=${endpoint.path}`
      : (exportName = "") => `nbd://${endpoint.host}:${endpoint.port}/${encodeURIComponent(exportName)}`;
  return { uri, stop };
}

/** A TCP port free a moment ago on 127.0.0.1 (nbdkit cannot report the one it picks). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** nbdkit listening on TCP 127.0.0.1. */
export async function startNbdkitTcp(args: readonly string[]): Promise<NbdServerProcess> {
  const port = await freePort();
  return startServer("nbdkit", ["-i", "127.0.0.1", "-p", String(port), "-f", "--exit-with-parent", ...args], {
    host: "127.0.0.1",
    port,
  });
}

/** nbdkit in the foreground on a fresh socket in `dir`: startNbdkit(dir, ["memory", "1M"]). */
export function startNbdkit(dir: string, args: readonly string[]): Promise<NbdServerProcess> {
  const socketPath = join(dir, `nbdkit-${process.pid}-${serial++}.sock`);
  return startServer("nbdkit", ["-U", socketPath, "-f", "--exit-with-parent", ...args], { path: socketPath });
}

/** qemu-nbd serving many clients on a fresh socket in `dir`: startQemuNbd(dir, ["-f", "raw", "-r", file]). */
export function startQemuNbd(dir: string, args: readonly string[]): Promise<NbdServerProcess> {
  const socketPath = join(dir, `qemu-nbd-${process.pid}-${serial++}.sock`);
  return startServer("qemu-nbd", ["-k", socketPath, "--persistent", "--shared=8", ...args], { path: socketPath });
}
