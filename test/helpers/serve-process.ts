// `vmabackup serve` as a real child process (bin/vmabackup.js running dist/,
// as npm start runs it), with its JSON log lines parsed as they arrive.
import { spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import * as path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [key: string]: unknown;
}

export interface ServeProcess {
  readonly child: ChildProcessWithoutNullStreams;
  /** Every stdout line, parsed; a line that is not JSON fails the test. */
  readonly logs: LogLine[];
  readonly stderr: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first log line that `match` accepts; rejects if the process exits first. */
  waitForLog(match: (line: LogLine) => boolean): Promise<LogLine>;
  /** SIGKILLs the process if it still runs, and waits for it. */
  kill(): Promise<void>;
}

export interface ServeOptions {
  /** Options for node itself, before the script (e.g. "--inspect-port=127.0.0.1:9300"). */
  readonly nodeArgs?: readonly string[];
  /** Added to this process's environment. */
  readonly env?: NodeJS.ProcessEnv;
}

/** Where a `serve` child keeps its archives, reads its sources and stores its state. */
export interface ServeDirs {
  readonly backupDir: string;
  readonly sourceRoot: string;
  readonly stateDir: string;
}

/** `--listen LISTEN --backup-dir ... --source-root ... --state-dir ...` for `runServe`. */
export function serveArgs(dirs: ServeDirs, listen = "127.0.0.1:0"): string[] {
  return [
    "--listen",
    listen,
    "--backup-dir",
    dirs.backupDir,
    "--source-root",
    dirs.sourceRoot,
    "--state-dir",
    dirs.stateDir,
  ];
}

export function runServe(args: readonly string[], options: ServeOptions = {}): ServeProcess {
  const nodeArgs = options.nodeArgs ?? [];
  const child = spawn(process.execPath, [...nodeArgs, "bin/vmabackup.js", "serve", ...args], {
    cwd: PROJECT_ROOT,
    env: { ...process.env, ...options.env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  const stderr: string[] = [];
  const waiters: Array<{ match: (line: LogLine) => boolean; resolve: (line: LogLine) => void }> = [];
  createInterface({ input: child.stdout }).on("line", (text) => {
    const line = JSON.parse(text) as LogLine;
    logs.push(line);
    for (const waiter of [...waiters]) {
      if (waiter.match(line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => stderr.push(chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    logs,
    stderr,
    exited,
    waitForLog(match) {
      const found = logs.find(match);
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        waiters.push({ match, resolve });
        void exited.then(({ code, signal }) =>
          reject(new Error(`serve exited (${code ?? signal}) first; stderr: ${stderr.join("")}`)),
        );
      });
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

/** The address a serve process logs once it listens. */
export async function listeningAddress(serve: ServeProcess): Promise<string> {
  const line = await serve.waitForLog((entry) => entry.msg === "listening");
  return line.address as string;
}
