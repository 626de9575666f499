#!/usr/bin/env node
// Entry point for the `vmabackup` command: runs the compiled CLI in dist/,
// which `npm ci` builds (the `prepare` script) and `npm run build` rebuilds.
import { existsSync } from "node:fs";
import { enableCompileCache } from "node:module";

const REQUIRED_MAJOR = 24;
const major = Number(process.versions.node.split(".")[0]);
if (major < REQUIRED_MAJOR) {
  console.error(
    `error: vmabackup needs Node.js ${REQUIRED_MAJOR} or newer, this is ${process.version} (${process.execPath}). ` +
      `npm ci installs it: run the command through npm (npx vmabackup, npm start) ` +
      `or as node_modules/.bin/node bin/vmabackup.js`,
  );
  process.exit(1);
}
// The daemon must never open Node's inspector on SIGUSR1: take the signal
// before the CLI loads (src/cli/daemon-signals.ts logs it later).
if (process.argv[2] === "serve") process.on("SIGUSR1", () => {});

// V8's compiled code is kept on disk between runs (in the OS temp dir; off
// with NODE_DISABLE_COMPILE_CACHE=1): the short `vma` commands start faster.
// Failing to keep it changes nothing but the start-up time.
enableCompileCache();

const main = new URL("../dist/src/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  console.error(`error: ${main.pathname} is missing: run 'npm run build' (npm ci runs it too)`);
  process.exit(1);
}
await import(main.href);
