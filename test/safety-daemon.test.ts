// `vmabackup serve` as a real child process, attacked through the process
// rather than through gRPC: SIGUSR1 must not open Node's inspector (anyone
// on the machine could then run code as the daemon), SIGHUP must not kill
// it, and a state dir it cannot use must be reported in one plain line.
import { execFile } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createConnection, createServer } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BackupService } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { canMount, unmount } from "./helpers/mounts.js";
import { listeningAddress, runServe, serveArgs } from "./helpers/serve-process.js";
import type { ServeProcess } from "./helpers/serve-process.js";

let rootDir: string;
const children: ServeProcess[] = [];
const mounted: string[] = [];
const execFileAsync = promisify(execFile);

beforeEach(async () => {
  rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-daemon-"));
});

afterEach(async () => {
  for (const child of children.splice(0)) await child.kill();
  for (const dir of mounted.splice(0)) await unmount(dir);
  await chmod(path.join(rootDir, "state"), 0o755).catch(() => undefined);
  await rm(rootDir, { recursive: true, force: true });
});

function daemonArgs(stateDir = path.join(rootDir, "state")): string[] {
  return serveArgs({ backupDir: path.join(rootDir, "backups"), sourceRoot: path.join(rootDir, "images"), stateDir });
}

function start(args: readonly string[], nodeArgs: readonly string[] = []): ServeProcess {
  const child = runServe(args, { nodeArgs });
  children.push(child);
  return child;
}

/** A TCP port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** True when something accepts TCP connections on 127.0.0.1:`port`. */
function isListening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function stillServes(address: string): Promise<void> {
  const client = createClient(BackupService, address);
  try {
    expect(await client.listBackups({})).toBeDefined();
  } finally {
    client.close();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe("signals", () => {
  it("SIGUSR1 does not open the inspector; the daemon logs it and keeps serving", async () => {
    const inspectorPort = await freePort();
    // Node opens its inspector on this port when SIGUSR1 arrives, unless the daemon stops it.
    const serve = start(daemonArgs(), [`--inspect-port=127.0.0.1:${inspectorPort}`]);
    const address = await listeningAddress(serve);

    serve.child.kill("SIGUSR1");
    // The inspector would have been listening well within this time.
    await sleep(500);
    expect(await isListening(inspectorPort)).toBe(false);
    expect(serve.stderr.join("")).not.toContain("Debugger listening");
    await serve.waitForLog((line) => line.signal === "SIGUSR1");
    await stillServes(address);

    serve.child.kill("SIGTERM");
    expect((await serve.exited).code).toBe(0);
  });

  it("SIGHUP is logged and ignored: the daemon keeps serving, then SIGTERM stops it cleanly", async () => {
    const serve = start(daemonArgs());
    const address = await listeningAddress(serve);

    serve.child.kill("SIGHUP");
    const logged = await serve.waitForLog((line) => line.signal === "SIGHUP");
    expect(logged.msg).toMatch(/ignored/);
    await sleep(200);
    expect(serve.child.exitCode).toBeNull();
    await stillServes(address);

    serve.child.kill("SIGTERM");
    expect((await serve.exited).code).toBe(0);
    expect(serve.logs.at(-1)?.msg).toBe("stopped");
  });
});

describe("a state dir the daemon cannot use", () => {
  /** The stderr of a serve child that must exit non-zero, after one plain line. */
  async function refusal(serve: ServeProcess): Promise<string> {
    const { code } = await serve.exited;
    expect(code).not.toBe(0);
    const stderr = serve.stderr.join("");
    const lines = stderr.trimEnd().split("\n");
    expect(lines, stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^error: /);
    expect(stderr).not.toMatch(/\bat .*\(.*:\d+:\d+\)/); // no stack trace
    return lines[0]!;
  }

  it("read-only: one plain line naming the dir and what to do", async () => {
    const stateDir = path.join(rootDir, "state");
    await mkdir(stateDir);
    if (process.getuid?.() !== 0) {
      await chmod(stateDir, 0o555);
    } else {
      // Root writes into a dir whatever its mode: a read-only filesystem stops it.
      if (!(await canMount())) return;
      await execFileAsync("mount", ["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", stateDir]);
      mounted.push(stateDir);
    }
    const line = await refusal(start(daemonArgs(stateDir)));
    expect(line).toContain(stateDir);
    expect(line).toMatch(/writable/);
    expect(line).toMatch(/--state-dir/);
  });

  it("a corrupt job database: one plain line naming the file and what to do", async () => {
    const stateDir = path.join(rootDir, "state");
    await mkdir(stateDir);
    await writeFile(path.join(stateDir, "jobs.sqlite"), Buffer.alloc(8192, 0x41));
    const line = await refusal(start(daemonArgs(stateDir)));
    expect(line).toContain(stateDir);
    expect(line).toMatch(/not a valid|corrupt/);
    expect(line).toMatch(/--state-dir/);
  });
});
