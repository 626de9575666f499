// Client commands that manage jobs beyond starting and following them:
// `vmabackup list`, `vmabackup speed UUID SIZE` and `vmabackup delete UUID`.
import { Argument, Option, type Command } from "commander";
import {
  BackupStatusSchema,
  DeleteBackupResponseSchema,
  type BackupState,
  type BackupStatus,
} from "../../gen/vmabackup/v1/backup_pb.js";
import { runClientCommand, unaryDeadline } from "./client-connection.js";
import { EXIT_OK } from "./exit-codes.js";
import { listBackups } from "./client-list.js";
import { addConnectionOptions, collecting, rejectingSyntaxErrors, type ConnectionOptions } from "./client-options.js";
import { requireStatus } from "./client-status.js";
import { escapeControls } from "./escape-controls.js";
import { formatJsonDocument, messageToJson } from "./format-json.js";
import { formatRate } from "./format-size.js";
import { formatStatusLine } from "./format-status.js";
import { parsePositiveCount } from "./parse-count.js";
import { parseSize } from "./parse-size.js";
import { parseState, STATE_NAMES } from "./parse-state.js";

interface ListOptions extends ConnectionOptions {
  readonly state?: readonly BackupState[];
  readonly limit?: number;
}

interface DeleteOptions extends ConnectionOptions {
  readonly archive?: boolean;
}

export function registerJobCommands(program: Command): void {
  registerListCommand(program);
  registerSpeedCommand(program);
  registerDeleteCommand(program);
}

function registerListCommand(program: Command): void {
  const command = program
    .command("list")
    .description("list the jobs the server remembers, newest first, one line each (--json: a JSON array)")
    .addOption(
      new Option("--state <state>", `only jobs in this state: ${STATE_NAMES.join(", ")} (repeat for more)`).argParser(
        collecting(parseState),
      ),
    )
    .addOption(
      new Option("--limit <n>", "show at most this many jobs (default: all)").argParser(
        rejectingSyntaxErrors(parsePositiveCount),
      ),
    );
  addConnectionOptions(command).action((options: ListOptions) =>
    runClientCommand(options, async (client) => {
      const statuses: BackupStatus[] = [];
      for await (const status of listBackups(client, { states: options.state ?? [], limit: options.limit })) {
        statuses.push(status);
      }
      if (options.json) {
        const documents = statuses.map((status) => messageToJson(BackupStatusSchema, status));
        process.stdout.write(`${JSON.stringify(documents, null, 2)}\n`);
      } else if (statuses.length === 0) {
        process.stdout.write(options.state === undefined ? "no backups\n" : "no backups in these states\n");
      } else {
        const now = new Date();
        process.stdout.write(statuses.map((status) => `${formatStatusLine(status, now)}\n`).join(""));
      }
      return EXIT_OK;
    }),
  );
}

function registerSpeedCommand(program: Command): void {
  const command = program
    .command("speed")
    .description("change the speed limit of an active job for the rest of the job (0 = unlimited)")
    .argument("<uuid>", "job uuid")
    .addArgument(
      new Argument("<size>", "bytes per second, e.g. 20M (IEC units); 0 removes the limit").argParser(
        rejectingSyntaxErrors(parseSize),
      ),
    );
  addConnectionOptions(command).action((uuid: string, bytesPerSecond: number, options: ConnectionOptions) =>
    runClientCommand(options, async (client) => {
      const response = await client.setBackupSpeed(
        { uuid, speedLimit: BigInt(bytesPerSecond) },
        { deadline: unaryDeadline() },
      );
      const status = requireStatus(response.status, "SetBackupSpeed");
      if (options.json) {
        process.stdout.write(`${formatJsonDocument(BackupStatusSchema, status)}\n`);
      } else {
        const limit = status.speedLimit === 0n ? "unlimited" : formatRate(Number(status.speedLimit));
        process.stdout.write(`${escapeControls(status.uuid)} speed limit ${limit}\n`);
      }
      return EXIT_OK;
    }),
  );
}

function registerDeleteCommand(program: Command): void {
  const command = program
    .command("delete")
    .description("forget a finished job's record (cancel an active job first)")
    .argument("<uuid>", "job uuid")
    .option("--archive", "also remove the job's archive");
  addConnectionOptions(command).action((uuid: string, options: DeleteOptions) =>
    runClientCommand(options, async (client) => {
      const deleteArchive = options.archive === true;
      const response = await client.deleteBackup({ uuid, deleteArchive }, { deadline: unaryDeadline() });
      if (options.json) {
        process.stdout.write(`${formatJsonDocument(DeleteBackupResponseSchema, response)}\n`);
      } else {
        process.stdout.write(`deleted ${uuid}${deleteArchive ? " and its archive" : ""}\n`);
      }
      return EXIT_OK;
    }),
  );
}
