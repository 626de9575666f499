// The client side of the CLI: `vmabackup backup | status | watch | cancel`,
// plus `list | speed | delete` from client-job-commands.ts. Each command
// talks to a running `vmabackup serve` over gRPC.
import { Option, type Command } from "commander";
import { BackupStatusSchema, CancelBackupResponseSchema, Compression } from "../../gen/vmabackup/v1/backup_pb.js";
import { parsePositiveCount } from "./parse-count.js";
import { readConfigFiles } from "./client-configs.js";
import { runClientCommand, unaryDeadline, type BackupClient } from "./client-connection.js";
import { EXIT_INTERRUPTED, EXIT_OK } from "./exit-codes.js";
import { registerJobCommands } from "./client-job-commands.js";
import { addConnectionOptions, collecting, rejectingSyntaxErrors, type ConnectionOptions } from "./client-options.js";
import { ProgressBarRenderer } from "./client-progress.js";
import { JsonLineRenderer, StatusLineRenderer, type StatusRenderer } from "./client-render.js";
import { requireStatus } from "./client-status.js";
import { untilInterrupted, watchBackups } from "./client-watch.js";
import { escapeControls } from "./escape-controls.js";
import { formatJsonDocument, formatStatusJson } from "./format-json.js";
import { formatStatusLine, formatStatusSummary } from "./format-status.js";
import {
  devicesInOrder,
  parseDeviceArgument,
  parseImageArgument,
  parseNbdArgument,
  parseQemuArgument,
  type DeviceArgument,
} from "./parse-device-source.js";
import { parseConfigArgument, type NamedPath } from "./parse-named-path.js";
import { EXIT_USAGE } from "./exit-codes.js";
import { parseSize } from "./parse-size.js";

interface BackupOptions extends ConnectionOptions {
  readonly file?: string;
  readonly compression?: keyof typeof COMPRESSIONS;
  readonly target?: string;
  readonly vmid?: number;
  readonly device?: readonly DeviceArgument[];
  readonly image?: readonly DeviceArgument[];
  readonly nbd?: readonly DeviceArgument[];
  readonly qemu?: readonly DeviceArgument[];
  readonly config?: readonly NamedPath[];
  readonly speed?: number;
  readonly watch?: boolean;
}

export function registerClientCommands(program: Command): void {
  registerBackupCommand(program);
  registerStatusCommand(program);
  registerWatchCommand(program);
  registerCancelCommand(program);
  registerJobCommands(program);
}

/** --compression's values; "auto" (the default) leaves it to the name's suffix. */
const COMPRESSIONS = {
  auto: Compression.UNSPECIFIED,
  none: Compression.NONE,
  zstd: Compression.ZSTD,
  gzip: Compression.GZIP,
} as const;

function registerBackupCommand(program: Command): void {
  const command = program
    .command("backup")
    .description("start a backup job on the server and print its uuid")
    .option(
      "--file <name>",
      "archive name (.vma, .vma.zst or .vma.gz), relative to the server's backup directory or the target's prefix",
    )
    .addOption(
      new Option("--compression <kind>", "compress the archive (default: as the --file name says)").choices(
        Object.keys(COMPRESSIONS),
      ),
    )
    .option("--target <name>", 'the server\'s store to write to, as its --target names it (default: "local")')
    .addOption(
      new Option(
        "--vmid <id>",
        "Proxmox VMID; without --file the archive gets vzdump's name, vzdump-qemu-<vmid>-<date>-<time>.vma.zst",
      ).argParser(rejectingSyntaxErrors(parsePositiveCount)),
    )
    .addOption(
      new Option(
        "--device <name=path>",
        "raw disk file or block device to back up, as NAME=PATH; a relative PATH is taken from the current " +
          "directory (repeat for more)",
      ).argParser(collecting(parseDeviceArgument)),
    )
    .addOption(
      new Option(
        "--image <name=path:format>",
        "disk image read through QEMU, as NAME=PATH:FORMAT with FORMAT one of raw, qcow2, vmdk, vdi, vhdx, qed " +
          "(repeat for more)",
      ).argParser(collecting(parseImageArgument)),
    )
    .addOption(
      new Option(
        "--nbd <name=uri>",
        "NBD export to back up, as NAME=URI (nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT; repeat for more)",
      ).argParser(collecting(parseNbdArgument)),
    )
    .addOption(
      new Option(
        "--qemu <name=qmp_socket:drive>",
        "drive of a running QEMU, read at one point in time, as NAME=QMP_SOCKET:DRIVE (repeat for more)",
      ).argParser(collecting(parseQemuArgument)),
    )
    .addOption(
      new Option("--config <[name=]path>", "config file to store in the archive (repeat for more)").argParser(
        collecting(parseConfigArgument),
      ),
    )
    .addOption(
      new Option("--speed <size>", "read at most this many bytes per second, e.g. 50M (IEC units)").argParser(
        rejectingSyntaxErrors(parseSize),
      ),
    )
    .option("--watch", "follow the job until it ends; exit 0 on DONE, 1 otherwise");
  addConnectionOptions(command).action((options: BackupOptions) => {
    // In command-line order across the four options: dev_ids follow it.
    const devices = devicesInOrder(options.device, options.image, options.nbd, options.qemu);
    if (devices.length === 0) {
      command.error("error: give at least one device: --device, --image, --nbd or --qemu", { exitCode: EXIT_USAGE });
    }
    if (options.file === undefined && options.vmid === undefined) {
      command.error("error: give --file, or --vmid for vzdump's archive name", { exitCode: EXIT_USAGE });
    }
    return runClientCommand(options, async (client) => {
      const configs = await readConfigFiles(options.config ?? []);
      const response = await client.backup(
        {
          backupFile: options.file ?? "",
          devices,
          configs,
          speedLimit: BigInt(options.speed ?? 0),
          compression: COMPRESSIONS[options.compression ?? "auto"],
          target: options.target ?? "",
          vmid: options.vmid ?? 0,
        },
        { deadline: unaryDeadline() },
      );
      const status = requireStatus(response.status, "Backup");
      process.stdout.write(options.json ? `${formatStatusJson(status)}\n` : `${escapeControls(status.uuid)}\n`);
      return options.watch ? watchFromCommandLine(client, status.uuid, options) : EXIT_OK;
    });
  });
}

function registerStatusCommand(program: Command): void {
  const command = program
    .command("status")
    .description("show a job's status (default: the most recently started job)")
    .argument("[uuid]", "job uuid");
  addConnectionOptions(command).action((uuid: string | undefined, options: ConnectionOptions) =>
    runClientCommand(options, async (client) => {
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
    runClientCommand(options, (client) => watchFromCommandLine(client, uuid ?? "", options)),
  );
}

function registerCancelCommand(program: Command): void {
  const command = program
    .command("cancel")
    .description("cancel a job, or every active job when no uuid is given")
    .argument("[uuid]", "job uuid");
  addConnectionOptions(command).action((uuid: string | undefined, options: ConnectionOptions) =>
    runClientCommand(options, async (client) => {
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

/** Follows `uuid` (or every job) with the renderer that suits the output. */
async function watchFromCommandLine(client: BackupClient, uuid: string, options: ConnectionOptions): Promise<number> {
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
