// `vmabackup vma list | config | verify | extract`: the archive tools, after
// Proxmox's `vma`, on top of the strict streaming reader. ARCHIVE is a file
// (.vma, .vma.gz or .vma.zst, told apart by content) or "-" for stdin.
// Exit codes: 0 ok, 1 invalid or incomplete archive, 2 usage or I/O error.
// Names in an archive are anyone's: text lines go out through writeLine,
// which escapes control characters; JSON and `config` output stay exact.
import type { Command } from "commander";
import { ExtractUsageError, extractArchive, imageFileName } from "../vma/extract-archive.js";
import { UnsupportedCompressionError, type OpenedArchive } from "../vma/open-archive.js";
import { openArchiveSource, type S3CommandOptions } from "./open-archive-source.js";
import type { VmaHeader, VmaProblem } from "../vma/reader-types.js";
import { verifyArchive, verifyArchiveHeader, type ArchiveVerdict } from "../vma/verify-archive.js";
import { escapeControls } from "./escape-controls.js";
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE } from "./exit-codes.js";
import { createProgressBar } from "./progress-bar.js";

const ARCHIVE_HELP = "archive: .vma, .vma.gz or .vma.zst (detected by content), s3://BUCKET/KEY, or - for stdin";
const PROGRESS_INTERVAL_MS = 250;

/** A request the archive cannot satisfy, e.g. a config name it does not have. */
class ArchiveRequestError extends Error {}

/** The `vma` command's --s3-* options, read before any subcommand runs. */
let s3Options: S3CommandOptions = {};

function openArchive(source: string): Promise<OpenedArchive> {
  return openArchiveSource(source, s3Options);
}

export function registerVmaCommands(program: Command): void {
  const vma = program
    .command("vma")
    .description("inspect, verify and extract VMA archives (like Proxmox's vma tool)")
    // Usage errors exit 2 like every other failure of the command line; help exits 0.
    .exitOverride((error) => process.exit(error.exitCode === 0 ? EXIT_OK : EXIT_USAGE))
    .option(
      "--s3-endpoint <url>",
      "S3 endpoint for s3:// archives (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS)",
    )
    .option("--s3-region <region>", "S3 region (default: AWS_REGION, else us-east-1)")
    .option("--s3-credentials <file>", "AWS shared-credentials file (default: the standard AWS chain)")
    .option("--s3-profile <name>", "profile in the credentials file (default: AWS_PROFILE, else default)")
    .option("--s3-path-style", "bucket in the path (on by default with --s3-endpoint)")
    .hook("preAction", (command) => {
      s3Options = command.opts<S3CommandOptions>();
    });

  vma
    .command("list")
    .description("show the archive's uuid, creation time, configs and devices (reads the header only)")
    .argument("<archive>", ARCHIVE_HELP)
    .option("--json", "print JSON")
    .action((archive: string, options: { json?: boolean }) => run(() => listCommand(archive, options.json === true)));

  vma
    .command("config")
    .description("print a config file stored in the archive (the first one by default)")
    .argument("<archive>", ARCHIVE_HELP)
    .argument("[name]", "config name, e.g. qemu-server.conf")
    .action((archive: string, name: string | undefined) => run(() => configCommand(archive, name)));

  vma
    .command("verify")
    .description("check the whole archive; exit 0 only when it is valid and complete")
    .argument("<archive>", ARCHIVE_HELP)
    .option("--allow-incomplete", "report missing clusters as a warning, not a failure")
    .option("--json", "print JSON")
    .action((archive: string, options: { allowIncomplete?: boolean; json?: boolean }) =>
      run(() => verifyCommand(archive, options.allowIncomplete === true, options.json === true)),
    );

  vma
    .command("extract")
    .description("write disk-<name>.raw per device and each config into DIR, never overwriting files")
    .argument("<archive>", ARCHIVE_HELP)
    .argument("<dir>", "target directory (created if missing)")
    .option(
      "--device <name>",
      "extract only this device (repeatable)",
      (name: string, names: string[]) => [...names, name],
      [] as string[],
    )
    .option("--sparse", "leave zero blocks as holes instead of writing them")
    .option("--allow-incomplete", "extract even when a chosen device misses clusters (they read as zeros)")
    .action(
      (archive: string, dir: string, options: { device: string[]; sparse?: boolean; allowIncomplete?: boolean }) =>
        run(() =>
          extractCommand(archive, dir, {
            devices: options.device,
            sparse: options.sparse === true,
            allowIncomplete: options.allowIncomplete === true,
          }),
        ),
    );
}

/** Runs a command body and turns its result or error into the exit code. */
async function run(body: () => Promise<number>): Promise<void> {
  try {
    process.exitCode = await body();
  } catch (error) {
    writeLine(process.stderr, `error: ${describeError(error)}`);
    process.exitCode = EXIT_USAGE;
  }
}

function describeError(error: unknown): string {
  if (
    error instanceof ArchiveRequestError ||
    error instanceof ExtractUsageError ||
    error instanceof UnsupportedCompressionError
  ) {
    return error.message;
  }
  const { code, syscall } = (error ?? {}) as NodeJS.ErrnoException;
  if (code === "EEXIST" && syscall === "open") {
    return `${(error as Error).message} (refusing to overwrite an existing file)`;
  }
  return error instanceof Error ? error.message : String(error);
}

async function listCommand(path: string, json: boolean): Promise<number> {
  const archive = await openArchive(path);
  const { header, problems } = await verifyArchiveHeader(archive.chunks);
  if (json) {
    process.stdout.write(`${JSON.stringify({ ...(header ? headerJson(header) : {}), problems }, null, 2)}\n`);
  } else {
    if (header) process.stdout.write(formatHeader(header));
    writeProblems(process.stderr, problems, problems.length);
  }
  return header !== undefined && problems.length === 0 ? EXIT_OK : EXIT_FAILURE;
}

async function configCommand(path: string, name: string | undefined): Promise<number> {
  const archive = await openArchive(path);
  const { header, problems } = await verifyArchiveHeader(archive.chunks);
  if (header === undefined) {
    writeProblems(process.stderr, problems, problems.length);
    return EXIT_FAILURE;
  }
  const config = name === undefined ? header.configs[0] : header.configs.find((candidate) => candidate.name === name);
  if (config === undefined) {
    const names = header.configs.map((candidate) => candidate.name).join(", ");
    throw new ArchiveRequestError(
      name === undefined
        ? "the archive holds no config"
        : `no config named ${name} in the archive; its configs: ${names || "none"}`,
    );
  }
  process.stdout.write(config.data);
  writeProblems(process.stderr, problems, problems.length);
  return problems.length === 0 ? EXIT_OK : EXIT_FAILURE;
}

async function verifyCommand(path: string, allowIncomplete: boolean, json: boolean): Promise<number> {
  const archive = await openArchive(path);
  const verdict = await withProgress("verify", archive, () => verifyArchive(archive.chunks, { allowIncomplete }));
  if (json) {
    process.stdout.write(`${JSON.stringify(verdictJson(verdict), null, 2)}\n`);
  } else {
    for (const warning of verdict.warnings) writeLine(process.stderr, `warning: ${warning}`);
    writeProblems(process.stdout, verdict.problems, verdict.problemCount);
    process.stdout.write(`${verdict.ok ? "OK" : `FAIL problems=${verdict.problemCount}`} ${verdictCounts(verdict)}\n`);
  }
  return verdict.ok ? EXIT_OK : EXIT_FAILURE;
}

async function extractCommand(
  path: string,
  dir: string,
  options: { devices: string[]; sparse: boolean; allowIncomplete: boolean },
): Promise<number> {
  const archive = await openArchive(path);
  const result = await withProgress("extract", archive, () => extractArchive(archive.chunks, { dir, ...options }));
  for (const warning of result.warnings) writeLine(process.stderr, `warning: ${warning}`);
  writeProblems(process.stdout, result.problems, result.problemCount);
  if (!result.ok) {
    process.stdout.write(`FAIL problems=${result.problemCount} (nothing extracted)\n`);
    return EXIT_FAILURE;
  }
  for (const file of result.files) writeLine(process.stdout, file);
  process.stdout.write(`OK files=${result.files.length} ${verdictCounts(result)}\n`);
  return EXIT_OK;
}

/** Runs `body` with a progress bar over the input bytes (on a terminal only). */
async function withProgress<T>(label: string, archive: OpenedArchive, body: () => Promise<T>): Promise<T> {
  const bar = await createProgressBar({ label, total: archive.inputSize });
  const timer = setInterval(() => bar.update(archive.inputBytesRead()), PROGRESS_INTERVAL_MS);
  try {
    return await body();
  } finally {
    clearInterval(timer);
    bar.stop();
  }
}

function formatHeader(header: VmaHeader): string {
  const lines = [`UUID: ${header.uuid}`, `CTIME: ${formatCtime(header.ctime)} (${header.ctime})`];
  for (const config of header.configs) lines.push(`CFG: size: ${config.data.length} name: ${config.name}`);
  for (const device of header.devices.values()) {
    lines.push(
      device.isVmstate
        ? `VMSTATE: dev_id=${device.devId} memory: ${device.size}`
        : `DEV: dev_id=${device.devId} size: ${device.size} devname: ${device.name}`,
    );
  }
  return lines.map((line) => `${escapeControls(line)}\n`).join("");
}

/** ISO 8601 in UTC, whole seconds. */
function formatCtime(ctime: number): string {
  const date = new Date(ctime * 1000);
  return Number.isNaN(date.getTime()) ? String(ctime) : date.toISOString().replace(".000Z", "Z");
}

function headerJson(header: VmaHeader): object {
  return {
    uuid: header.uuid,
    ctime: header.ctime,
    ctimeIso: formatCtime(header.ctime),
    configs: header.configs.map((config) => ({ name: config.name, size: config.data.length })),
    devices: [...header.devices.values()].map((device) => ({
      devId: device.devId,
      name: device.name,
      size: device.size,
      file: imageFileName(device),
    })),
  };
}

function verdictCounts(verdict: ArchiveVerdict): string {
  const devices = [...(verdict.header?.devices.values() ?? [])];
  const bytes = devices.reduce((sum, device) => sum + device.size, 0);
  return [
    `devices=${devices.length}`,
    `configs=${verdict.header?.configs.length ?? 0}`,
    `bytes=${bytes}`,
    `extents=${verdict.extents}`,
    `clusters=${verdict.clusters}`,
    `stored_blocks=${verdict.storedBlocks}`,
    `archive_bytes=${verdict.archiveBytes}`,
  ].join(" ");
}

function verdictJson(verdict: ArchiveVerdict): object {
  return {
    ok: verdict.ok,
    ...(verdict.header ? headerJson(verdict.header) : {}),
    extents: verdict.extents,
    clusters: verdict.clusters,
    storedBlocks: verdict.storedBlocks,
    archiveBytes: verdict.archiveBytes,
    problemCount: verdict.problemCount,
    problems: verdict.problems,
    warnings: verdict.warnings,
    missing: verdict.missing.map((device) => ({
      devId: device.devId,
      name: device.name,
      count: device.count,
      ranges: device.ranges.map((range) => [range.first, range.last]),
    })),
  };
}

function writeProblems(stream: NodeJS.WritableStream, problems: readonly VmaProblem[], total: number): void {
  for (const problem of problems) writeLine(stream, `offset ${problem.offset}: ${problem.message}`);
  if (total > problems.length) stream.write(`... and ${total - problems.length} more problems\n`);
}

/** One line of human output, its control characters escaped. */
function writeLine(stream: NodeJS.WritableStream, text: string): void {
  stream.write(`${escapeControls(text)}\n`);
}
