// The client side of the CLI: `vmabackup backup | status | watch | cancel`.
// Each command talks to a running `vmabackup serve` over gRPC.
import { InvalidArgumentError, Option, type Command } from "commander";
import {
  BackupStatusSchema,
  CancelBackupResponseSchema,
  type BackupStatus,
} from "../../gen/vmabackup/v1/backup_pb.js";
import { readConfigFiles } from "./client-configs.js";
import { runClientCommand, unaryDeadline, type BackupClient } from "./client-connection.js";
import { EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE } from "./client-errors.js";
import { ProgressBarRenderer } from "./client-progress.js";
import { JsonLineRenderer, StatusLineRenderer, type StatusRenderer } from "./client-render.js";
import { untilInterrupted, watchBackups } from "./client-watch.js";
import { formatJsonDocument, formatStatusJson } from "./format-json.js";
import { formatStatusLine, formatStatusSummary } from "./format-status.js";
import { parseConfigArgument, parseDeviceArgument, type NamedPath } from "./parse-named-path.js";
import { ArgumentSyntaxError } from "./parse-error.js";
import { DEFAULT_SERVER_ADDRESS, parseServerAddress } from "./parse-server-address.js";
import { parseSize } from "./parse-size.js";

interface ConnectionOptions {
  readonly server: string;
  readonly json?: boolean;
}

interface BackupOptions extends ConnectionOptions {
  readonly file: string;
  readonly device: readonly NamedPath[];
  readonly config?: readonly NamedPath[];
  readonly speed?: number;
  readonly watch?: boolean;
}

export function registerClientCommands(program: Command): void {
  registerBackupCommand(program);
  registerStatusCommand(program);
  registerWatchCommand(program);
  registerCancelCommand(program);
}

function registerBackupCommand(program: Command): void {
  const command = program
    .command("backup")
    .description("start a backup job on the server and print its uuid")
    .requiredOption("--file <name>", "archive name (.vma), relative to the server's backup directory")
    .addOption(
      new Option("--device <name=path>", "disk image to back up, as NAME=PATH; a relative PATH is taken from the current directory (repeat for more)")
        .argParser(collecting(parseDeviceArgument))
        .makeOptionMandatory(),
    )
    .addOption(
      new Option("--config <[name=]path>", "config file to store in the archive (repeat for more)")
        .argParser(collecting(parseConfigArgument)),
    )
    .addOption(
      new Option("--speed <size>", "read at most this many bytes per second, e.g. 50M (IEC units)")
        .argParser(rejectingSyntaxErrors(parseSize)),
    )
    .option("--watch", "follow the job until it ends; exit 0 on DONE, 1 otherwise");
  addConnectionOptions(command).action((options: BackupOptions) =>
    runClientCommand(options.server, async (client) => {
      const configs = await readConfigFiles(options.config ?? []);
      const response = await client.backup(
        {
          backupFile: options.file,
          devices: options.device.map(({ name, path }) => ({ name, path })),
          configs,
          speedLimit: BigInt(options.speed ?? 0),
        },
        { deadline: unaryDeadline() },
      );
      const status = requireStatus(response.status, "Backup");
      process.stdout.write(options.json ? `${formatStatusJson(status)}\n` : `${status.uuid}\n`);
      return options.watch ? watchFromCommandLine(client, status.uuid, options) : EXIT_OK;
    }),
  );
}

function registerStatusCommand(program: Command): void {
  const command = program
    .command("status")
    .description("show a job's status (default: the most recently started job)")
    .argument("[uuid]", "job uuid");
  addConnectionOptions(command).action((uuid: string | undefined, options: ConnectionOptions) =>
    runClientCommand(options.server, async (client) => {
      const { status } = await client.queryBackup({ uuid: uuid ?? "" }, { deadline: unaryDeadline() });
      if (options.json) {
        const document = status === undefined ? "null" : formatJsonDocument(BackupStatusSchema, status);
        process.stdout.write(`${document}\n`);
      } else {
        const text = status === undefined ? "no backup has run yet" : formatStatusSummary(status, new Date());
        process.stdout.write(`${text}\n`);
      }
      return EXIT_OK;
    }),
  );
}

function registerWatchCommand(program: Command): void {
  const command = program
    .command("watch")
    .description(
      "follow a job until it ends (exit 0 on DONE, 1 otherwise), or every job until Ctrl-C when no uuid is given",
    )
    .argument("[uuid]", "job uuid");
  addConnectionOptions(command).action((uuid: string | undefined, options: ConnectionOptions) =>
    runClientCommand(options.server, (client) => watchFromCommandLine(client, uuid ?? "", options)),
  );
}

function registerCancelCommand(program: Command): void {
  const command = program
    .command("cancel")
    .description("cancel a job, or every active job when no uuid is given")
    .argument("[uuid]", "job uuid");
  addConnectionOptions(command).action((uuid: string | undefined, options: ConnectionOptions) =>
    runClientCommand(options.server, async (client) => {
      const response = await client.cancelBackup({ uuid: uuid ?? "" }, { deadline: unaryDeadline() });
      if (options.json) {
        process.stdout.write(`${formatJsonDocument(CancelBackupResponseSchema, response)}\n`);
      } else if (response.statuses.length === 0) {
        process.stdout.write("no active backup to cancel\n");
      } else {
        const now = new Date();
        for (const status of response.statuses) process.stdout.write(`${formatStatusLine(status, now)}\n`);
      }
      return EXIT_OK;
    }),
  );
}

/** --server and --json, and usage errors exiting 2, on every client command. */
function addConnectionOptions(command: Command): Command {
  return command
    .addOption(
      new Option("--server <host:port>", "address of the vmabackup server")
        .env("VMABACKUP_SERVER")
        .default(DEFAULT_SERVER_ADDRESS)
        .argParser(rejectingSyntaxErrors(parseServerAddress)),
    )
    .option("--json", "print proto3 JSON instead of text (one object per line while watching)")
    .exitOverride((error) => process.exit(error.exitCode === 0 ? EXIT_OK : EXIT_USAGE));
}

/** Follows `uuid` (or every job) with the renderer that suits the output. */
async function watchFromCommandLine(
  client: BackupClient,
  uuid: string,
  options: ConnectionOptions,
): Promise<number> {
  const exitCode = await untilInterrupted((signal) =>
    watchBackups(client, { uuid, renderer: createRenderer(options.json === true), signal }),
  );
  if (exitCode === EXIT_INTERRUPTED) {
    const which = uuid === "" ? "the jobs go" : `job ${uuid} goes`;
    process.stderr.write(`watch stopped; ${which} on (vmabackup cancel stops ${uuid === "" ? "them" : "it"})\n`);
  }
  return exitCode;
}

/** Bars on a terminal, JSON lines with --json, plain lines otherwise. */
function createRenderer(json: boolean): StatusRenderer {
  if (json) return new JsonLineRenderer(process.stdout);
  if (process.stdout.isTTY && process.stderr.isTTY) return new ProgressBarRenderer(process.stderr);
  return new StatusLineRenderer(process.stdout);
}

function requireStatus(status: BackupStatus | undefined, rpc: string): BackupStatus {
  if (status === undefined) throw new Error(`the server's ${rpc} response carries no status`);
  return status;
}

/** Makes commander report a parser's syntax error as an invalid option value. */
function rejectingSyntaxErrors<T>(parse: (text: string) => T): (text: string) => T {
  return (text) => {
    try {
      return parse(text);
    } catch (error) {
      if (error instanceof ArgumentSyntaxError) throw new InvalidArgumentError(error.message);
      throw error;
    }
  };
}

/** For options given once per item (--device, --config): parses each and keeps them in order. */
function collecting<T>(parse: (text: string) => T): (text: string, previous: T[] | undefined) => T[] {
  const parseOne = rejectingSyntaxErrors(parse);
  return (text, previous) => [...(previous ?? []), parseOne(text)];
}
