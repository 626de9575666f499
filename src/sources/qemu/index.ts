// What the rest of vmabackup uses of src/sources/qemu: freezing drives of a
// running QEMU for a point-in-time backup, and cleaning up after a crash.

export { type QemuSourceReason, QemuSourceError } from "./errors.js";
export { type FreezeOptions, freezeDrives, plannedLeftovers } from "./fleecing.js";
export type {
  FleecingFailure,
  FleecingFailureKind,
  FleecingSession,
  FleecingTimeouts,
  FrozenDrive,
  TeardownResult,
} from "./fleecing-session.js";
export { type CleanupOptions, type CleanupResult, cleanupLeftovers, type LeftoverRecord } from "./leftovers.js";
export { QmpClient, type QmpConnectOptions, type QmpEvent } from "./qmp-client.js";
