#!/usr/bin/env node
// Entry point for the `vmabackup` command: runs the compiled CLI in dist/,
// which `npm ci` builds (the `prepare` script) and `npm run build` rebuilds.
import { existsSync } from "node:fs";

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
const main = new URL("../dist/src/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  console.error(`error: ${main.pathname} is missing: run 'npm run build' (npm ci runs it too)`);
  process.exit(1);
}
await import(main.href);
