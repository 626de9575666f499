// A private qemu-storage-daemon serving one image read-only over NBD on a
// unix socket in a directory only we can reach. QEMU gets the image's files
// as inherited descriptors and an explicit backing chain, so it opens no file
// by name. Ready means its pid file exists: qemu-storage-daemon writes it
// after creating its exports and NBD server, before accepting connections
// (documented ordering).
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { ImageLayer } from "./image-chain.js";

export const EXPORT_NAME = "disk";

/** Descriptor numbers in the child: layer i is FIRST_LAYER_FD + i. */
const FIRST_LAYER_FD = 3;
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;
const POLL_MS = 10;
const STDERR_KEPT = 4096;

export interface ImageExport {
  /** The NBD unix socket; the export is named EXPORT_NAME. */
  readonly socketPath: string;
  readonly exportName: string;
  /** Stops the daemon and removes its directory; never throws, safe to call twice. */
  stop(): Promise<void>;
}

export interface ImageExportOptions {
  readonly layers: readonly ImageLayer[];
  /** An existing, private (0700) directory for the socket and pid file; removed by stop(). */
  readonly workDir: string;
  readonly command?: string;
}

/** The --blockdev options: a file node and a format node per layer, chained explicitly. */
export function blockdevOptions(layers: readonly ImageLayer[]): string[] {
  // Bottom layer first: a node must exist before another names it as backing.
  return layers
    .map((layer, index) => ({ layer, index }))
    .reverse()
    .flatMap(({ layer, index }) => {
      const file = {
        driver: "file",
        "node-name": `file${index}`,
        filename: `/proc/self/fd/${FIRST_LAYER_FD + index}`,
        "read-only": true,
      };
      const format: Record<string, unknown> = {
        driver: layer.format,
        "node-name": `layer${index}`,
        file: `file${index}`,
        "read-only": true,
      };
      // null: open no backing file at all, whatever the header says now.
      if (layer.takesBacking) format["backing"] = index + 1 < layers.length ? `layer${index + 1}` : null;
      return ["--blockdev", JSON.stringify(file), "--blockdev", JSON.stringify(format)];
    });
}

function daemonArgs(layers: readonly ImageLayer[], socketPath: string, pidFile: string): string[] {
  return [
    ...blockdevOptions(layers),
    "--nbd-server",
    `addr.type=unix,addr.path=${socketPath}`,
    "--export",
    `type=nbd,id=export0,node-name=layer0,name=${EXPORT_NAME},writable=off`,
    "--pidfile",
    pidFile,
  ];
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

class DaemonProcess {
  private stderr = "";
  private exitText: string | undefined;
  private readonly exited: Promise<void>;

  constructor(readonly child: ChildProcess) {
    child.stderr?.setEncoding("utf8").on("data", (text: string) => {
      this.stderr = (this.stderr + text).slice(-STDERR_KEPT);
    });
    this.exited = new Promise((resolve) => {
      child.on("error", (error) => {
        this.exitText =
          (error as NodeJS.ErrnoException).code === "ENOENT" ? "qemu-storage-daemon is not installed" : error.message;
        resolve();
      });
      child.on("exit", (code, signal) => {
        this.exitText ??= `qemu-storage-daemon exited (${signal ?? `code ${code}`})`;
        resolve();
      });
    });
  }

  get hasExited(): boolean {
    return this.exitText !== undefined;
  }

  /** Why it ended, with what it printed. */
  get failure(): string {
    const said = this.stderr.trim().replace(/^qemu-storage-daemon: /gm, "");
    return said === "" ? (this.exitText ?? "") : `${this.exitText}: ${said}`;
  }

  async stop(): Promise<void> {
    if (this.hasExited) return;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Starts the daemon and waits until it serves; rejects with what QEMU said. */
export async function startImageExport(options: ImageExportOptions): Promise<ImageExport> {
  const socketPath = path.join(options.workDir, "nbd.sock");
  const pidFile = path.join(options.workDir, "qsd.pid");
  const fds = options.layers.map((layer) => layer.handle.fd);
  const child = spawn(options.command ?? "qemu-storage-daemon", daemonArgs(options.layers, socketPath, pidFile), {
    stdio: ["ignore", "ignore", "pipe", ...fds],
  });
  const daemon = new DaemonProcess(child);
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await daemon.stop();
    await fs.rm(options.workDir, { recursive: true, force: true }).catch(() => undefined);
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await exists(pidFile))) {
    if (daemon.hasExited) {
      await stop();
      throw new Error(daemon.failure);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`qemu-storage-daemon did not start within ${START_TIMEOUT_MS / 1000} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return { socketPath, exportName: EXPORT_NAME, stop };
}
