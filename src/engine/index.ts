// The engine's public face: everything outside src/engine (the server, the
// CLI, metrics) imports from here and nothing else of the engine
// (dependency-cruiser rule engine-public-face). Tests may reach the
// internals directly.
export { BackupEngine, INTERRUPTED_MESSAGE, StateDirLockedError, StoreVersionError } from "./backup-engine.js";
export type { BackupEngineOptions, StatusSubscription } from "./backup-engine.js";
export { JOB_STORE_FILE, STATE_DIR_LOCK_FILE } from "./engine-wiring.js";
export { REQUEST_ID_TTL_MS } from "./request-dedup.js";
export { EngineError } from "./errors.js";
export type { EngineErrorKind, FieldViolation } from "./errors.js";
export { REASON } from "./reasons.js";
export type { Reason } from "./reasons.js";
export { quote } from "./quote.js";
export { parseUuid } from "./job-uuid.js";
export { checkPageSize } from "./list-query.js";
export { RevisionFilter } from "./revision-filter.js";
export { archiveDeviceSize, SECTOR_SIZE } from "./archive-size.js";
export { DEFAULT_TARGET, parseTarget, TargetConfigError } from "../stores/store-targets.js";
export type { TargetSpec } from "../stores/store-targets.js";
export type { S3ClientOptions } from "../stores/s3/s3-client.js";
export { DEVICE_SOURCE_KINDS, IMAGE_FORMATS, JOB_STATES, TERMINAL_STATES } from "./types.js";
export type { ImageFormat } from "./types.js";
export type {
  ArchiveCompression,
  BackupSpec,
  ConfigSpec,
  DeleteOptions,
  DeviceSource,
  DeviceSourceKind,
  DeviceSpec,
  DeviceStatus,
  EngineOptions,
  JobState,
  JobStatus,
  ListPage,
  ListQuery,
  WatchOptions,
} from "./types.js";
export {
  MAX_BACKUP_FILE_NAME_BYTES,
  MAX_CONFIG_BYTES,
  MAX_CONFIGS_PER_JOB,
  MAX_DEVICE_NAME_BYTES,
  MAX_DEVICES_PER_JOB,
  MAX_REQUEST_ID_BYTES,
} from "./validate-request.js";
export { MAX_HEADER_BLOB_BYTES, MAX_PATH_BYTES } from "./request-limits.js";
