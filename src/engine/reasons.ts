// Stable machine-readable reasons of EngineError, one per refusal. Clients
// may act on them (and a later issue sends them as google.rpc.ErrorInfo), so
// a reason is never renamed or reused for another case.
import { SOURCE_REASON } from "../sources/source-refusal.js";

export const REASON = {
  // Request shape (invalid-argument).
  /** The request bytes are not a protobuf message of the method's request type. */
  REQUEST_MALFORMED: "REQUEST_MALFORMED",
  NO_DEVICES: "NO_DEVICES",
  TOO_MANY_DEVICES: "TOO_MANY_DEVICES",
  TOO_MANY_CONFIGS: "TOO_MANY_CONFIGS",
  DEVICE_NAME_INVALID: "DEVICE_NAME_INVALID",
  DEVICE_NAME_TOO_LONG: "DEVICE_NAME_TOO_LONG",
  DEVICE_NAME_RESERVED: "DEVICE_NAME_RESERVED",
  DEVICE_NAME_DUPLICATE: "DEVICE_NAME_DUPLICATE",
  DEVICE_PATH_INVALID: "DEVICE_PATH_INVALID",
  /** Two devices of one request are the same file or block device. */
  DEVICE_SOURCE_DUPLICATE: "DEVICE_SOURCE_DUPLICATE",
  CONFIG_NAME_INVALID: "CONFIG_NAME_INVALID",
  CONFIG_NAME_DUPLICATE: "CONFIG_NAME_DUPLICATE",
  /** A config would be restored to the file of a device's image (disk-<name>.raw, ...). */
  CONFIG_NAME_CONFLICT: "CONFIG_NAME_CONFLICT",
  CONFIG_TOO_LARGE: "CONFIG_TOO_LARGE",
  /** The driver's format cannot hold the plan (e.g. configs overflow the VMA header). */
  ARCHIVE_LIMIT_EXCEEDED: "ARCHIVE_LIMIT_EXCEEDED",
  FORMAT_UNSUPPORTED: "FORMAT_UNSUPPORTED",
  BACKUP_FILE_INVALID: "BACKUP_FILE_INVALID",
  /** backup_file's last component leaves no room for the temporary ".partial" suffix within 255 bytes. */
  BACKUP_FILE_NAME_TOO_LONG: "BACKUP_FILE_NAME_TOO_LONG",
  BACKUP_FILE_BAD_SUFFIX: "BACKUP_FILE_BAD_SUFFIX",
  /** The compression field is not one of the enum's values. */
  COMPRESSION_INVALID: "COMPRESSION_INVALID",
  /** backup_file's suffix says another compression than the compression field. */
  COMPRESSION_MISMATCH: "COMPRESSION_MISMATCH",
  /** target names none of the server's stores. */
  TARGET_UNKNOWN: "TARGET_UNKNOWN",
  /** vmid is not a Proxmox VMID, or neither backup_file nor vmid was given. */
  VMID_INVALID: "VMID_INVALID",
  SPEED_LIMIT_INVALID: "SPEED_LIMIT_INVALID",
  UUID_INVALID: "UUID_INVALID",
  /** request_id longer than 128 bytes of UTF-8 (or not text). */
  REQUEST_ID_INVALID: "REQUEST_ID_INVALID",
  /**
   * Backup: the request_id started a job within 24 hours with a different
   * request (already-exists, the job's uuid in the metadata).
   */
  REQUEST_ID_REUSED: "REQUEST_ID_REUSED",
  /** ListBackups: a page_token that no earlier page returned. */
  PAGE_TOKEN_INVALID: "PAGE_TOKEN_INVALID",
  /** ListBackups: a negative or fractional page_size. */
  PAGE_SIZE_INVALID: "PAGE_SIZE_INVALID",
  /** ListBackups: a state filter that names no job state. */
  JOB_STATE_INVALID: "JOB_STATE_INVALID",
  /** WatchBackup: an after_revision that is not a revision (negative, NaN). */
  AFTER_REVISION_INVALID: "AFTER_REVISION_INVALID",
  /**
   * WatchBackup: an after_revision above the latest revision this server
   * handed out (its state dir was reset, or the revision came from another
   * server); out-of-range, with latest_revision in the metadata.
   */
  AFTER_REVISION_OUT_OF_RANGE: "AFTER_REVISION_OUT_OF_RANGE",

  /** A device gives more than one of path, image, nbd and qemu. */
  DEVICE_SOURCE_AMBIGUOUS: "DEVICE_SOURCE_AMBIGUOUS",
  /** An image source without a format (the server never probes it). */
  IMAGE_FORMAT_MISSING: "IMAGE_FORMAT_MISSING",
  /** An image source whose format is not one of raw, qcow2, vmdk, vdi, vhdx, qed. */
  IMAGE_FORMAT_UNKNOWN: "IMAGE_FORMAT_UNKNOWN",
  /** An nbd source whose URI does not parse, or is not nbd:// or nbd+unix:// with what that needs. */
  NBD_URI_INVALID: "NBD_URI_INVALID",
  /** A qemu source whose qmp_socket is empty or not an absolute path. */
  QMP_SOCKET_INVALID: "QMP_SOCKET_INVALID",
  /** A qemu source whose drive is empty or holds NUL. */
  DRIVE_NAME_INVALID: "DRIVE_NAME_INVALID",

  // Sources: SOURCE_NOT_FOUND, SOURCE_UNREADABLE, SOURCE_EMPTY,
  // SOURCE_TYPE_UNSUPPORTED, SOURCE_OPEN_FAILED, SOURCE_PATH_TOO_LONG,
  // PATH_NOT_ALLOWED (confinement, permission-denied), SOURCE_KIND_NOT_WIRED:
  // see src/sources/source-refusal.ts.
  ...SOURCE_REASON,

  // Source kinds the server's settings do not allow (permission-denied).
  /** nbd sources are off: the server has no --nbd-allow. */
  NBD_SOURCES_DISABLED: "NBD_SOURCES_DISABLED",
  /** The NBD URI's socket or host is not one --nbd-allow names. */
  NBD_TARGET_NOT_ALLOWED: "NBD_TARGET_NOT_ALLOWED",
  /** qemu sources are off: the server has no --qmp-root. */
  QEMU_SOURCES_DISABLED: "QEMU_SOURCES_DISABLED",
  /** The QMP socket lies outside every --qmp-root directory. */
  QMP_SOCKET_NOT_ALLOWED: "QMP_SOCKET_NOT_ALLOWED",

  // The archive.
  BACKUP_FILE_EXISTS: "BACKUP_FILE_EXISTS",
  BACKUP_FILE_IN_USE: "BACKUP_FILE_IN_USE",
  BACKUP_DIR_NOT_FOUND: "BACKUP_DIR_NOT_FOUND",
  BACKUP_DIR_NOT_WRITABLE: "BACKUP_DIR_NOT_WRITABLE",
  BACKUP_FILE_CREATE_FAILED: "BACKUP_FILE_CREATE_FAILED",

  // Jobs.
  DEVICE_IN_USE: "DEVICE_IN_USE",
  /** A qemu source whose QEMU monitor another active job holds (failed-precondition). */
  QMP_SOCKET_IN_USE: "QMP_SOCKET_IN_USE",
  JOB_NOT_FOUND: "JOB_NOT_FOUND",
  JOB_NOT_ACTIVE: "JOB_NOT_ACTIVE",
  /** DeleteBackup of a job that is still running (failed-precondition). */
  JOB_ACTIVE: "JOB_ACTIVE",
  /** DeleteBackup: the file at the job's archive path is no longer the archive it wrote. */
  ARCHIVE_REPLACED: "ARCHIVE_REPLACED",
  /** DeleteBackup: removing the archive failed (e.g. EACCES). */
  ARCHIVE_REMOVE_FAILED: "ARCHIVE_REMOVE_FAILED",
  ENGINE_SHUT_DOWN: "ENGINE_SHUT_DOWN",
  /** The job store's filesystem is full (resource-exhausted): free space in the state dir. */
  STATE_STORE_FULL: "STATE_STORE_FULL",
  /** The job store cannot be read or written now (unavailable): I/O error, locked, read-only. */
  STATE_STORE_UNAVAILABLE: "STATE_STORE_UNAVAILABLE",
  INTERNAL: "INTERNAL",
} as const;

export type Reason = (typeof REASON)[keyof typeof REASON];
