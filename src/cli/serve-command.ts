// `vmabackup serve`: runs the daemon in the foreground, logging pino JSON
// lines to stdout, until SIGINT or SIGTERM stops it cleanly (exit 0).
import { mkdir } from "node:fs/promises";
import * as path from "node:path";
import type { Command } from "commander";
import ms from "ms";
import { pino } from "pino";
import type { Logger } from "pino";
import { startServer } from "../server/server.js";

const DEFAULT_LISTEN = "127.0.0.1:50051";
const DEFAULT_BACKUP_DIR = "./var/backups";
const DEFAULT_SOURCE_ROOT = "./var/images";
const DEFAULT_STATE_DIR = "./var/state";
const DEFAULT_PROGRESS_INTERVAL = "200ms";
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** Exit code for a malformed command line. */
const USAGE_EXIT_CODE = 2;

interface ServeFlags {
  readonly listen: string;
  readonly backupDir: string;
  readonly sourceRoot: string[];
  readonly stateDir: string;
  readonly progressInterval: string;
  readonly logLevel: string;
}

/** What the flags mean once checked: absolute paths, milliseconds. */
interface ServeSettings {
  readonly listen: string;
  readonly backupDir: string;
  readonly sourceRoots: string[];
  readonly stateDir: string;
  readonly progressIntervalMs: number;
  readonly logLevel: string;
}

/** HOST:PORT with an optional bracketed IPv6 host; port 0 picks a free one. */
const LISTEN_PATTERN = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):(\d{1,5})$/;

/** Thrown for flag values that make no sense; reported as a usage error. */
class FlagError extends Error {}

function parseListen(text: string): string {
  const match = LISTEN_PATTERN.exec(text);
  if (match === null || Number(match[2]) > 65535) {
    throw new FlagError(`--listen: expected HOST:PORT (e.g. ${DEFAULT_LISTEN}), got "${text}"`);
  }
  return text;
}

function parseDuration(flag: string, text: string): number {
  // ms() returns undefined for text it cannot read; it accepts negatives.
  const value = ms(text as ms.StringValue) as number | undefined;
  if (value === undefined || !Number.isFinite(value) || value < 0) {
    throw new FlagError(`${flag}: expected a duration such as 200ms or 1s, got "${text}"`);
  }
  return value;
}

function parseLogLevel(text: string): string {
  if (!LOG_LEVELS.includes(text)) {
    throw new FlagError(`--log-level: expected one of ${LOG_LEVELS.join(", ")}, got "${text}"`);
  }
  return text;
}

function settingsFrom(flags: ServeFlags): ServeSettings {
  const roots = flags.sourceRoot.length > 0 ? flags.sourceRoot : [DEFAULT_SOURCE_ROOT];
  return {
    listen: parseListen(flags.listen),
    backupDir: path.resolve(flags.backupDir),
    sourceRoots: roots.map((root) => path.resolve(root)),
    stateDir: path.resolve(flags.stateDir),
    progressIntervalMs: parseDuration("--progress-interval", flags.progressInterval),
    logLevel: parseLogLevel(flags.logLevel),
  };
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

async function serve(settings: ServeSettings, logger: Logger): Promise<void> {
  for (const dir of [settings.backupDir, settings.stateDir, ...settings.sourceRoots]) {
    await mkdir(dir, { recursive: true });
  }
  const server = await startServer({ ...settings, logger });

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn({ signal }, "second signal during shutdown; exiting at once");
      process.exit(1);
    }
    stopping = true;
    server.shutdown(signal).then(
      // Exit explicitly: a half-open connection's keepalive timer must not
      // keep a stopped daemon alive.
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

export function registerServeCommand(program: Command): void {
  program
    .command("serve")
    .description("Run the backup daemon in the foreground (stop it with SIGINT or SIGTERM)")
    .option("--listen <host:port>", "address to serve gRPC on (port 0 picks a free port)", DEFAULT_LISTEN)
    .option("--backup-dir <dir>", "where archives are written", DEFAULT_BACKUP_DIR)
    .option(
      "--source-root <dir>",
      `directory sources may be read from; repeatable (default: ${DEFAULT_SOURCE_ROOT})`,
      collect,
      [],
    )
    .option("--state-dir <dir>", "where the daemon keeps its own state", DEFAULT_STATE_DIR)
    .option(
      "--progress-interval <duration>",
      "minimum time between two progress updates to a watcher",
      DEFAULT_PROGRESS_INTERVAL,
    )
    .option("--log-level <level>", `one of ${LOG_LEVELS.join(", ")}`, "info")
    .action(async (flags: ServeFlags, command: Command) => {
      let settings: ServeSettings;
      try {
        settings = settingsFrom(flags);
      } catch (error) {
        if (!(error instanceof FlagError)) throw error;
        command.error(`error: ${error.message}`, { exitCode: USAGE_EXIT_CODE });
      }
      const logger = pino({ level: settings.logLevel });
      try {
        await serve(settings, logger);
      } catch (error) {
        logger.fatal({ err: error }, "cannot start the server");
        process.exit(1);
      }
    });
}
