// Checks of a backup request that need no filesystem: names, counts, the
// format, the archive name and the speed. They run first, so a malformed
// request is refused before any file is opened.
import { PARTIAL_SUFFIX } from "../stores/local/archive-file.js";
import type { BackupDriver } from "../drivers/driver.js";
import { EngineError } from "./errors.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import { compressionOfName, VmidError, vzdumpArchiveName } from "../stores/archive-names.js";
import { COMPRESSION_SUFFIX, type Compression } from "../stores/compressed-upload.js";
import type { BackupSpec } from "./types.js";
import { checkSourceAllowed, checkSourceSyntax } from "./validate-sources.js";
import type { SourceSettings } from "./validate-sources.js";

// API limits, documented in the proto. They match what a VMA archive can
// hold (dev_ids 1..254, 256 config slots, 65535-byte blobs); limits that
// depend on the whole plan (the header size) are the driver's checkPlan.
export const MAX_DEVICES_PER_JOB = 254;
export const MAX_CONFIGS_PER_JOB = 256;
export const MAX_CONFIG_BYTES = 65535;
export const MAX_DEVICE_NAME_BYTES = 127;
/** Linux's limit on one file name, in bytes. */
const NAME_MAX = 255;
/** Longest backup_file name (last component): its temporary name must fit NAME_MAX too. */
export const MAX_BACKUP_FILE_NAME_BYTES = NAME_MAX - PARTIAL_SUFFIX.length;
/** Reserved in VMA for the VM's RAM state, never a disk. */
export const RESERVED_DEVICE_NAME = "vmstate";

// `\s` with the u flag covers Unicode whitespace too; restore tools match
// device names with `\S+`.
const WHITESPACE = /\s/u;
// With the u flag a surrogate range matches only unpaired halves, which
// cannot be encoded as UTF-8.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function invalid(reason: string, field: string, problem: string): EngineError {
  return new EngineError("invalid-argument", reason, `${field}: ${problem}`, field);
}

/**
 * Runs independent checks and keeps every invalid-argument refusal, so that
 * a client learns all the problems of its request at once (the proto
 * promises one BadRequest violation per problem). A check still throws
 * invalid(...) at its first problem; what it checks after that depends on it.
 */
class Violations {
  private readonly refusals: EngineError[] = [];

  /** Runs `check`, keeping an invalid-argument refusal; anything else is thrown on. */
  check(check: () => void): void {
    try {
      check();
    } catch (error) {
      if (!(error instanceof EngineError) || error.kind !== "invalid-argument") throw error;
      this.refusals.push(error);
    }
  }

  /** Throws the first refusal, carrying all of them, when there is any. */
  throwIfAny(): void {
    const [first] = this.refusals;
    if (first === undefined) return;
    if (this.refusals.length === 1) throw first;
    const violations = this.refusals.map((refusal) => ({
      reason: refusal.reason,
      field: refusal.field ?? "",
      description: refusal.message,
    }));
    const message = this.refusals.map((refusal) => refusal.message).join("; ");
    throw new EngineError("invalid-argument", first.reason, message, first.field, undefined, violations);
  }
}

function deviceNameProblem(name: string): string | undefined {
  if (name === "") return "must not be empty";
  // Restore tools write a device to a file of (or named after) its name.
  if (name === "." || name === "..") return `${quote(name)} is not a file name; use a name like "drive-scsi0"`;
  if (name.includes("/")) return `${quote(name)} contains "/"`;
  if (name.includes("\0")) return `${quote(name)} contains NUL`;
  if (WHITESPACE.test(name)) return `${quote(name)} contains whitespace`;
  if (LONE_SURROGATE.test(name)) return `${quote(name)} is not valid UTF-8 text`;
  return undefined;
}

function configNameProblem(name: string): string | undefined {
  if (name === "") return "must not be empty";
  if (name === "." || name === "..") return `${quote(name)} is not a file name`;
  if (name.includes("/")) return `${quote(name)} contains "/"`;
  if (name.includes("\0")) return `${quote(name)} contains NUL`;
  if (LONE_SURROGATE.test(name)) return `${quote(name)} is not valid UTF-8 text`;
  return undefined;
}

/**
 * Where a config would be restored onto a device's image: `vma extract`
 * (Proxmox's and ours) writes `disk-<name>.raw`, Proxmox's through
 * `tmp-disk-<name>.raw`; jancc/vma-extractor and dissect.archive write the
 * device to a file of its bare name. All of them write configs by name into
 * the same directory.
 */
function configConflict(name: string, devices: BackupSpec["devices"]): string | undefined {
  const index = devices.findIndex(
    (device) => name === `disk-${device.name}.raw` || name === `tmp-disk-${device.name}.raw` || name === device.name,
  );
  if (index === -1) return undefined;
  const device = quote(devices[index]?.name ?? "");
  return (
    `${quote(name)} is a file name restore tools use for the image of devices[${index}].name ${device}; rename ` +
    `the config`
  );
}

function checkDevices(spec: BackupSpec, violations: Violations): void {
  if (spec.devices.length === 0) {
    throw invalid(REASON.NO_DEVICES, "devices", "at least one device is required");
  }
  if (spec.devices.length > MAX_DEVICES_PER_JOB) {
    throw invalid(
      REASON.TOO_MANY_DEVICES,
      "devices",
      `${spec.devices.length} devices given, at most ${MAX_DEVICES_PER_JOB} allowed`,
    );
  }
  const seen = new Map<string, number>();
  for (const [index, device] of spec.devices.entries()) {
    violations.check(() => {
      const field = `devices[${index}].name`;
      const problem = deviceNameProblem(device.name);
      if (problem !== undefined) throw invalid(REASON.DEVICE_NAME_INVALID, field, problem);
      if (device.name === RESERVED_DEVICE_NAME) {
        throw invalid(REASON.DEVICE_NAME_RESERVED, field, `"${RESERVED_DEVICE_NAME}" is reserved`);
      }
      const bytes = Buffer.byteLength(device.name, "utf8");
      if (bytes > MAX_DEVICE_NAME_BYTES) {
        throw invalid(
          REASON.DEVICE_NAME_TOO_LONG,
          field,
          `${bytes} bytes of UTF-8, at most ${MAX_DEVICE_NAME_BYTES} allowed`,
        );
      }
      const earlier = seen.get(device.name);
      if (earlier !== undefined) {
        throw invalid(REASON.DEVICE_NAME_DUPLICATE, field, `${quote(device.name)} is also devices[${earlier}].name`);
      }
      seen.set(device.name, index);
    });
  }
  for (const [index, device] of spec.devices.entries()) {
    violations.check(() => checkSourceSyntax(device.source, index));
  }
}

function checkConfigs(spec: BackupSpec, violations: Violations): void {
  if (spec.configs.length > MAX_CONFIGS_PER_JOB) {
    throw invalid(
      REASON.TOO_MANY_CONFIGS,
      "configs",
      `${spec.configs.length} configs given, at most ${MAX_CONFIGS_PER_JOB} allowed`,
    );
  }
  const seen = new Map<string, number>();
  for (const [index, config] of spec.configs.entries()) {
    violations.check(() => {
      const field = `configs[${index}].name`;
      const problem = configNameProblem(config.name);
      if (problem !== undefined) throw invalid(REASON.CONFIG_NAME_INVALID, field, problem);
      const earlier = seen.get(config.name);
      if (earlier !== undefined) {
        throw invalid(REASON.CONFIG_NAME_DUPLICATE, field, `${quote(config.name)} is also configs[${earlier}].name`);
      }
      seen.set(config.name, index);
      const conflict = configConflict(config.name, spec.devices);
      if (conflict !== undefined) throw invalid(REASON.CONFIG_NAME_CONFLICT, field, conflict);
      if (config.data.byteLength > MAX_CONFIG_BYTES) {
        throw invalid(
          REASON.CONFIG_TOO_LARGE,
          `configs[${index}].data`,
          `${config.data.byteLength} bytes, at most ${MAX_CONFIG_BYTES} allowed`,
        );
      }
    });
  }
}

function findDriver(spec: BackupSpec, drivers: readonly BackupDriver[]): BackupDriver {
  const driver = drivers.find((candidate) => candidate.format === spec.format);
  if (driver === undefined) {
    const known = drivers.map((candidate) => candidate.format).join(", ");
    throw invalid(REASON.FORMAT_UNSUPPORTED, "format", `${quote(spec.format)} is not one of: ${known}`);
  }
  return driver;
}

/** The suffixes an archive name of `driver`'s format may end in, longest first: ".vma.zst", ".vma.gz", ".vma". */
function archiveSuffixes(driver: BackupDriver): Array<{ suffix: string; compression: Compression }> {
  const all: Compression[] = ["zstd", "gzip", "none"];
  return all.map((compression) => ({ suffix: driver.fileSuffix + COMPRESSION_SUFFIX[compression], compression }));
}

/** The compression a request asks for: its compression field, else what the name's suffix says. */
export function requestedCompression(spec: BackupSpec): Compression {
  return spec.compression ?? compressionOfName(spec.backupFile) ?? "none";
}

/** `driver` is undefined when the format is refused: the suffix is then not checked. */
function checkBackupFile(backupFile: string, driver: BackupDriver | undefined, compression?: Compression): void {
  const field = "backup_file";
  if (backupFile === "") throw invalid(REASON.BACKUP_FILE_INVALID, field, "must not be empty (or give a vmid)");
  if (backupFile.includes("\0")) throw invalid(REASON.BACKUP_FILE_INVALID, field, "contains NUL");
  if (driver === undefined) return;
  const suffixes = archiveSuffixes(driver);
  const matched = suffixes.find((candidate) => backupFile.endsWith(candidate.suffix));
  if (matched === undefined) {
    const names = suffixes.map((candidate) => `"${candidate.suffix}"`).join(", ");
    throw invalid(REASON.BACKUP_FILE_BAD_SUFFIX, field, `${quote(backupFile)} must end in one of ${names}`);
  }
  if (compression !== undefined && compression !== matched.compression) {
    const wanted = suffixes.find((candidate) => candidate.compression === compression)?.suffix ?? "";
    throw invalid(
      REASON.COMPRESSION_MISMATCH,
      "compression",
      `${compression} archives are named "*${wanted}", but ${quote(backupFile)} says ${matched.compression}: ` +
        `rename it or leave compression unspecified`,
    );
  }
  const base = backupFile.slice(backupFile.lastIndexOf("/") + 1);
  if (base === matched.suffix) {
    throw invalid(REASON.BACKUP_FILE_INVALID, field, `${quote(backupFile)} needs a name before "${matched.suffix}"`);
  }
  // Not the name itself: it is long enough to bury the message.
  const bytes = Buffer.byteLength(base, "utf8");
  if (bytes > MAX_BACKUP_FILE_NAME_BYTES) {
    throw invalid(
      REASON.BACKUP_FILE_NAME_TOO_LONG,
      field,
      `the file name is ${bytes} bytes of UTF-8, at most ${MAX_BACKUP_FILE_NAME_BYTES} allowed ` +
        `(the archive is written as "<name>${PARTIAL_SUFFIX}" first, and a file name holds at most ${NAME_MAX} bytes)`,
    );
  }
}

/**
 * The request with vzdump's archive name when backup_file is empty and a
 * vmid is given (`at`: now, in the server's local time as vzdump names it).
 */
export function withVzdumpName(spec: BackupSpec, at: Date): BackupSpec {
  if (spec.vmid === undefined) return spec;
  try {
    const name = vzdumpArchiveName(spec.vmid, at, spec.compression ?? "zstd");
    return spec.backupFile === "" ? { ...spec, backupFile: name } : spec;
  } catch (error) {
    if (error instanceof VmidError) throw invalid(REASON.VMID_INVALID, "vmid", error.message);
    throw error;
  }
}

/** Throws unless `bytesPerSecond` is a usable speed limit (0 = unlimited). */
export function checkSpeedLimit(bytesPerSecond: number, field = "speed_limit"): void {
  if (!Number.isSafeInteger(bytesPerSecond) || bytesPerSecond < 0) {
    throw invalid(REASON.SPEED_LIMIT_INVALID, field, `${bytesPerSecond} is not a whole number of bytes per second`);
  }
}

/** Longest request id, in bytes of UTF-8. */
export const MAX_REQUEST_ID_BYTES = 128;

/** Throws unless `requestId` is usable as an idempotency key ("" or undefined: none). */
export function checkRequestId(requestId: string | undefined): void {
  if (requestId === undefined) return;
  const field = "request_id";
  if (LONE_SURROGATE.test(requestId)) {
    throw invalid(REASON.REQUEST_ID_INVALID, field, `${quote(requestId)} is not valid UTF-8 text`);
  }
  const bytes = Buffer.byteLength(requestId, "utf8");
  if (bytes > MAX_REQUEST_ID_BYTES) {
    throw invalid(REASON.REQUEST_ID_INVALID, field, `${bytes} bytes of UTF-8, at most ${MAX_REQUEST_ID_BYTES} allowed`);
  }
}

/**
 * Checks everything about `spec` that needs no filesystem and returns the
 * driver of its format. Throws EngineError (invalid-argument) naming every
 * problem found (its `violations`, when there are several).
 */
export function validateRequest(spec: BackupSpec, drivers: readonly BackupDriver[]): BackupDriver {
  const violations = new Violations();
  violations.check(() => checkDevices(spec, violations));
  violations.check(() => checkConfigs(spec, violations));
  let driver: BackupDriver | undefined;
  violations.check(() => {
    driver = findDriver(spec, drivers);
  });
  violations.check(() => checkBackupFile(spec.backupFile, driver, spec.compression));
  violations.check(() => checkSpeedLimit(spec.speedLimit));
  violations.check(() => checkRequestId(spec.requestId));
  violations.throwIfAny();
  return driver!;
}

/**
 * Throws permission-denied for the first device whose source kind or place
 * the server's settings do not allow; call after validateRequest.
 */
export function checkSourcesAllowed(spec: BackupSpec, settings: SourceSettings): void {
  for (const [index, device] of spec.devices.entries()) checkSourceAllowed(device.source, index, settings);
}
