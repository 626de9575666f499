// Vitest global setup: the tests run the `vmabackup` command as it ships
// (bin/vmabackup.js → dist/), so dist/ is rebuilt first whenever a file in
// src/ or gen/ (or a tsconfig) is newer than the last build. Type errors do
// not stop the tests here (`npm test` type-checks in its own step), so the
// build emits anyway and only prints them.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, readdirSync, statSync, utimesSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const STAMP = path.join(ROOT, "dist", ".built");
/** Written by every tsc build, `npm run build` included. */
const BUILD_INFO = path.join(ROOT, "dist", ".tsbuildinfo");

/** When dist/ was last built from the sources it holds; 0 if never. */
function builtAt(): number {
  return Math.max(...[STAMP, BUILD_INFO].map((file) => (existsSync(file) ? statSync(file).mtimeMs : 0)));
}

function newestMtime(entry: string): number {
  const stat = statSync(entry);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return readdirSync(entry).reduce(
    (newest, name) => Math.max(newest, newestMtime(path.join(entry, name))),
    stat.mtimeMs,
  );
}

export default function setup(): void {
  const sources = ["src", "gen", "tsconfig.json", "tsconfig.build.json"].map((entry) => path.join(ROOT, entry));
  const newest = Math.max(...sources.map(newestMtime));
  if (builtAt() >= newest && existsSync(path.join(ROOT, "dist", "src", "cli", "main.js"))) return;
  // A file saved while tsc runs must count as newer than this build.
  const started = new Date();
  const tsc = path.join(ROOT, "node_modules", "typescript", "bin", "tsc");
  const result = spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json", "--noEmitOnError", "false"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (result.error) throw result.error;
  if (!existsSync(path.join(ROOT, "dist", "src", "cli", "main.js"))) {
    throw new Error(`building dist/ failed:\n${result.stdout}${result.stderr}`);
  }
  // The data files the code reads next to its modules, as scripts/build.sh copies them.
  for (const name of readdirSync(path.join(ROOT, "gen")).filter((file) => file.endsWith(".binpb"))) {
    copyFileSync(path.join(ROOT, "gen", name), path.join(ROOT, "dist", "gen", name));
  }
  if (result.status !== 0) {
    process.stderr.write(`warning: dist/ built with type errors (npm run check:types):\n${result.stdout}`);
    return;
  }
  writeFileSync(STAMP, `${started.toISOString()}\n`);
  utimesSync(STAMP, started, started);
}
