// Translation between protobuf messages and the engine's plain types. Only
// what the wire format allows but the engine cannot represent is refused
// here (unknown enum values, uint64 beyond 2^53, malformed uuids); the
// engine validates everything else.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { validate as isUuid } from "uuid";
import {
  BackupFormat,
  BackupState,
  BackupStatusSchema,
  DeviceStatusSchema,
} from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupRequest, BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import { EngineError } from "../engine/errors.js";
import { quote } from "../engine/quote.js";
import { REASON } from "../engine/reasons.js";
import type { Reason } from "../engine/reasons.js";
import type { BackupSpec, JobState, JobStatus } from "../engine/types.js";

const STATE_TO_PROTO: Readonly<Record<JobState, BackupState>> = {
  active: BackupState.ACTIVE,
  done: BackupState.DONE,
  error: BackupState.ERROR,
  cancelled: BackupState.CANCELLED,
};

/** Engine format names by wire value; UNSPECIFIED means the default, VMA. */
const FORMAT_FROM_PROTO: ReadonlyMap<number, string> = new Map([
  [BackupFormat.UNSPECIFIED, "vma"],
  [BackupFormat.VMA, "vma"],
]);

const FORMAT_TO_PROTO: ReadonlyMap<string, BackupFormat> = new Map([["vma", BackupFormat.VMA]]);

function invalidArgument(reason: Reason, field: string, message: string): EngineError {
  return new EngineError("invalid-argument", reason, `${field}: ${message}`, field);
}

/** The speed limit as a JS number, which must hold it without losing precision. */
function speedLimitNumber(value: bigint, field: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalidArgument(REASON.SPEED_LIMIT_INVALID, field, `${value} exceeds ${Number.MAX_SAFE_INTEGER}`);
  }
  return Number(value);
}

export function toBackupSpec(request: BackupRequest): BackupSpec {
  const format = FORMAT_FROM_PROTO.get(request.format);
  if (format === undefined) {
    throw invalidArgument(REASON.FORMAT_UNSUPPORTED, "format", `unknown value ${request.format}`);
  }
  return {
    backupFile: request.backupFile,
    format,
    devices: request.devices.map((device) => ({ name: device.name, path: device.path })),
    configs: request.configs.map((config) => ({ name: config.name, data: config.data })),
    speedLimit: speedLimitNumber(request.speedLimit, "speed_limit"),
  };
}

/**
 * The job a request selects: undefined for an empty uuid ("latest" or
 * "all"), else the uuid in canonical lower case.
 */
export function toJobSelector(uuid: string, field = "uuid"): string | undefined {
  if (uuid === "") return undefined;
  if (!isUuid(uuid)) {
    throw invalidArgument(REASON.UUID_INVALID, field, `${quote(uuid)} is not a uuid`);
  }
  return uuid.toLowerCase();
}

export function toBackupStatus(status: JobStatus): BackupStatus {
  return create(BackupStatusSchema, {
    uuid: status.uuid,
    state: STATE_TO_PROTO[status.state],
    errorMessage: status.errorMessage,
    backupFile: status.backupFile,
    format: FORMAT_TO_PROTO.get(status.format) ?? BackupFormat.UNSPECIFIED,
    totalBytes: BigInt(status.totalBytes),
    transferredBytes: BigInt(status.transferredBytes),
    zeroBytes: BigInt(status.zeroBytes),
    startTime: timestampFromDate(status.startTime),
    endTime: status.endTime === undefined ? undefined : timestampFromDate(status.endTime),
    speedLimit: BigInt(status.speedLimit),
    devices: status.devices.map((device) =>
      create(DeviceStatusSchema, {
        name: device.name,
        devId: device.devId,
        size: BigInt(device.size),
        transferredBytes: BigInt(device.transferredBytes),
        zeroBytes: BigInt(device.zeroBytes),
      }),
    ),
  });
}
