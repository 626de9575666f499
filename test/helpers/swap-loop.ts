// Races the server's path checks: a child process that swaps a name between
// a harmless target and a symlink to somewhere forbidden as fast as it can,
// until stopped. A separate process, so that the swaps really run while the
// server's event loop is between its check and its open.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { lstat } from "node:fs/promises";

// Plain JavaScript for `node -e` (no tsx start-up cost). Both modes only
// ever use rename() to move names, so each step is atomic.
const SWAP_SCRIPT = `
const fs = require("node:fs");
const [mode, name, inside, outside] = process.argv.slice(1);
const parked = name + ".parked";
const link = name + ".link";
const quietly = (step) => { try { step(); } catch {} };
if (mode === "file") {
  // name is alternately a hard link to \`inside\` and a symlink to \`outside\`.
  for (;;) {
    quietly(() => fs.unlinkSync(link));
    fs.symlinkSync(outside, link);
    fs.renameSync(link, name);
    quietly(() => fs.unlinkSync(parked));
    fs.linkSync(inside, parked);
    fs.renameSync(parked, name);
  }
} else {
  // name is alternately the directory \`inside\` and a symlink to the directory \`outside\`
  // (a symlink cannot replace a directory in one rename, so it is briefly absent).
  fs.symlinkSync(outside, link);
  fs.renameSync(inside, name);
  for (;;) {
    fs.renameSync(name, inside);
    fs.renameSync(link, name);
    fs.renameSync(name, link);
    fs.renameSync(inside, name);
  }
}
`;

export interface SwapLoop {
  /** Stops the loop and waits for the process to exit. */
  stop(): Promise<void>;
}

/**
 * Starts swapping `name`: mode "file" alternates a hard link to the file
 * `inside` and a symlink to `outside`; mode "dir" moves the directory
 * `inside` to `name` and back, alternating with a symlink to the directory
 * `outside`. Resolves once the first swap is done.
 */
export async function startSwapLoop(
  mode: "file" | "dir",
  name: string,
  inside: string,
  outside: string,
): Promise<SwapLoop> {
  const child: ChildProcess = spawn(process.execPath, ["-e", SWAP_SCRIPT, mode, name, inside, outside], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  // Started is when `name` first exists (a process start takes tens of milliseconds).
  for (let tries = 0; ; tries++) {
    if (child.exitCode !== null) throw new Error(`swap loop died: ${stderr}`);
    if (
      await lstat(name).then(
        () => true,
        () => false,
      )
    )
      break;
    if (tries > 500) throw new Error("swap loop did not start");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return {
    async stop() {
      if (child.exitCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}
