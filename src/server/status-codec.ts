// Translation between protobuf messages and the engine's plain types. Only
// what the wire format allows but the engine cannot represent is refused
// here (unknown enum values, uint64 beyond 2^53, malformed uuids, negative
// page sizes); the engine validates everything else.
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  BackupFormat,
  BackupState,
  BackupStatusSchema,
  Compression as ProtoCompression,
  DeviceStatusSchema,
} from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupRequest, BackupStatus, ListBackupsRequest } from "../../gen/vmabackup/v1/backup_pb.js";
import { archiveDeviceSize, checkPageSize, EngineError, parseUuid, REASON } from "../engine/index.js";
import type { ArchiveCompression, BackupSpec, JobState, JobStatus, ListQuery } from "../engine/index.js";
import { REQUEST_REASON } from "./request-reasons.js";
import { toDeviceSource, toProtoSourceKind } from "./source-codec.js";

const STATE_TO_PROTO: Readonly<Record<JobState, BackupState>> = {
  active: BackupState.ACTIVE,
  done: BackupState.DONE,
  error: BackupState.ERROR,
  cancelled: BackupState.CANCELLED,
};

/** Engine states by wire value; UNSPECIFIED selects nothing and is refused. */
const STATE_FROM_PROTO: ReadonlyMap<number, JobState> = new Map(
  Object.entries(STATE_TO_PROTO).map(([state, value]) => [value, state as JobState]),
);

/** Engine format names by wire value; UNSPECIFIED means the default, VMA. */
const FORMAT_FROM_PROTO: ReadonlyMap<number, string> = new Map([
  [BackupFormat.UNSPECIFIED, "vma"],
  [BackupFormat.VMA, "vma"],
]);

const FORMAT_TO_PROTO: ReadonlyMap<string, BackupFormat> = new Map([["vma", BackupFormat.VMA]]);

function invalidArgument(reason: string, field: string, message: string): EngineError {
  return new EngineError("invalid-argument", reason, `${field}: ${message}`, field);
}

/** A uint64 as a JS number, which must hold it without losing precision. */
function safeNumber(value: bigint, field: string, reason: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalidArgument(reason, field, `${value} exceeds ${Number.MAX_SAFE_INTEGER}`);
  }
  return Number(value);
}

/** A speed limit in bytes per second as a JS number. */
export function toSpeedLimit(value: bigint, field = "speed_limit"): number {
  return safeNumber(value, field, REASON.SPEED_LIMIT_INVALID);
}

/** A revision to resume after, as a JS number. */
export function toRevision(value: bigint, field = "after_revision"): number {
  return safeNumber(value, field, REASON.AFTER_REVISION_INVALID);
}

const COMPRESSION_FROM_PROTO = new Map<ProtoCompression, ArchiveCompression>([
  [ProtoCompression.NONE, "none"],
  [ProtoCompression.ZSTD, "zstd"],
  [ProtoCompression.GZIP, "gzip"],
]);

/** The request's compression; unspecified leaves it to the name's suffix. */
function toCompression(value: ProtoCompression): { compression?: ArchiveCompression } {
  if (value === ProtoCompression.UNSPECIFIED) return {};
  const compression = COMPRESSION_FROM_PROTO.get(value);
  if (compression === undefined) {
    throw invalidArgument(REASON.COMPRESSION_INVALID, "compression", `unknown value ${value}`);
  }
  return { compression };
}

export function toBackupSpec(request: BackupRequest): BackupSpec {
  const format = FORMAT_FROM_PROTO.get(request.format);
  if (format === undefined) {
    throw invalidArgument(REASON.FORMAT_UNSUPPORTED, "format", `unknown value ${request.format}`);
  }
  return {
    backupFile: request.backupFile,
    format,
    devices: request.devices.map((device, index) => ({ name: device.name, source: toDeviceSource(device, index) })),
    configs: request.configs.map((config) => ({ name: config.name, data: config.data })),
    speedLimit: toSpeedLimit(request.speedLimit),
    // proto3 has no "unset" for strings: empty means the client sent none.
    ...(request.requestId === "" ? {} : { requestId: request.requestId }),
    ...toCompression(request.compression),
    ...(request.target === "" ? {} : { target: request.target }),
    ...(request.vmid === 0 ? {} : { vmid: request.vmid }),
  };
}

/**
 * The job a request selects: undefined for an empty uuid ("latest" or
 * "all"), else the uuid in canonical lower case.
 */
export function toJobSelector(uuid: string, field = "uuid"): string | undefined {
  if (uuid === "") return undefined;
  return parseUuid(uuid, field);
}

/** Like toJobSelector for RPCs where the uuid is required: empty is INVALID_ARGUMENT. */
export function toRequiredUuid(uuid: string, field = "uuid"): string {
  const selected = toJobSelector(uuid, field);
  if (selected === undefined) {
    throw invalidArgument(REQUEST_REASON.UUID_REQUIRED, field, "is required");
  }
  return selected;
}

/**
 * What ListBackups asks of the engine. page_size 0 (the default) and sizes
 * above the maximum are the engine's to interpret; a negative one is a
 * malformed request.
 */
export function toListQuery(request: ListBackupsRequest): ListQuery {
  checkPageSize(request.pageSize);
  const states = request.states.map((value, index) => {
    const state = STATE_FROM_PROTO.get(value);
    if (state === undefined) {
      const name = value === BackupState.UNSPECIFIED ? "BACKUP_STATE_UNSPECIFIED" : `unknown value ${value}`;
      throw invalidArgument(REASON.JOB_STATE_INVALID, `states[${index}]`, `${name} is not a state to filter by`);
    }
    return state;
  });
  return {
    pageSize: request.pageSize,
    ...(request.pageToken === "" ? {} : { pageToken: request.pageToken }),
    states: [...new Set(states)],
  };
}

/** The engine measures floats; the wire carries whole units, never negative. */
function wholeNonNegative(value: number): number {
  return Number.isFinite(value) && value > 0 ? Math.round(value) : 0;
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
        archiveSize: BigInt(archiveDeviceSize(device.size)),
        sourceKind: toProtoSourceKind(device.sourceKind),
        source: device.source,
        scratchBytes: BigInt(device.scratchBytes),
      }),
    ),
    rate: BigInt(wholeNonNegative(status.rate)),
    eta:
      status.etaMs === undefined || !Number.isFinite(status.etaMs)
        ? undefined
        : durationFromMs(wholeNonNegative(status.etaMs)),
    revision: BigInt(status.revision),
    updateTime: timestampFromDate(status.updateTime),
    requestId: status.requestId ?? "",
    writtenBytes: BigInt(status.writtenBytes ?? 0),
    archiveLocation: status.archiveLocation ?? "",
  });
}
