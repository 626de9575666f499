// Human-readable renderings of a BackupStatus: the multi-line summary of
// `vmabackup status` and the one-line form used by `watch`, `cancel` and
// `list`. Rate and ETA of an active job are the server's (status.rate and
// status.eta, measured over the last few seconds), not guessed here. Text
// from the status is shown with its control characters escaped.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { BackupState, SourceKind, type BackupStatus, type DeviceStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import { averageRate, elapsedMs, etaMs, stateName } from "./client-status.js";
import { escapeControls } from "./escape-controls.js";
import { formatBytes, formatDuration, formatPercent, formatRate } from "./format-size.js";

/** "1 min 05 s" left, or "-" while the server has no estimate. */
export function formatEta(status: BackupStatus): string {
  const left = etaMs(status);
  return left === undefined ? "-" : formatDuration(left);
}

/**
 * The rate to show: the current one while the job runs ("- B/s" before the
 * server has measured one), the average over the run once it ended (the
 * server reports a finished job's rate as 0).
 */
function shownRate(status: BackupStatus, now: Date): string {
  if (status.state !== BackupState.ACTIVE) return formatRate(averageRate(status, now));
  return status.rate === 0n ? "- B/s" : formatRate(Number(status.rate));
}

/**
 * "45.0%  1.2 GiB / 2.0 GiB  120.0 MiB/s  ETA 1 min 05 s  zero 30.0%": progress
 * without identity or state; a finished job has no ETA. `zeroShare: false`
 * leaves the zero share out, for narrow progress bars.
 */
export function formatProgress(status: BackupStatus, now: Date, { zeroShare = true } = {}): string {
  const parts = [
    formatPercent(status.transferredBytes, status.totalBytes),
    `${formatBytes(status.transferredBytes)} / ${formatBytes(status.totalBytes)}`,
    shownRate(status, now),
  ];
  if (status.state === BackupState.ACTIVE) parts.push(`ETA ${formatEta(status)}`);
  if (zeroShare) parts.push(`zero ${formatPercent(status.zeroBytes, status.transferredBytes)}`);
  return parts.join("  ");
}

/** What a finished job left: the archive path, or why there is none. */
function formatOutcome(status: BackupStatus, now: Date): string {
  const duration = `in ${formatDuration(elapsedMs(status, now))}`;
  if (status.state === BackupState.DONE) return `${duration}  ${escapeControls(status.backupFile)}`;
  if (status.errorMessage !== "") return `${duration}  ${escapeControls(status.errorMessage)}`;
  return duration;
}

/** One line per status: uuid, state, progress and, once ended, the outcome. */
export function formatStatusLine(status: BackupStatus, now: Date): string {
  const line = `${escapeControls(status.uuid)} ${stateName(status.state)}  ${formatProgress(status, now)}`;
  return status.state === BackupState.ACTIVE ? line : `${line}  ${formatOutcome(status, now)}`;
}

/** "120.0 MiB/s (limit 200.0 MiB/s)" while active; "... average over 4.0 s ..." once ended. */
function formatRateRow(status: BackupStatus, now: Date): string {
  const limit = status.speedLimit > 0n ? ` (limit ${formatRate(Number(status.speedLimit))})` : "";
  if (status.state === BackupState.ACTIVE) return `${shownRate(status, now)}${limit}`;
  return `${formatRate(averageRate(status, now))} average over ${formatDuration(elapsedMs(status, now))}${limit}`;
}

/**
 * "  padded with 511 zero bytes to 1024 bytes" for a device whose size is not
 * a multiple of 512 (the archive records it rounded up); "" otherwise, and
 * from servers that do not report archive_size.
 */
function formatPadding(device: DeviceStatus): string {
  if (device.archiveSize <= device.size) return "";
  const padding = device.archiveSize - device.size;
  return `  padded with ${padding} zero byte${padding === 1n ? "" : "s"} to ${device.archiveSize} bytes`;
}

/** Where the device is read from (servers before source kinds send none), and a qemu source's scratch use. */
function formatSource(device: DeviceStatus): string {
  if (device.sourceKind === SourceKind.UNSPECIFIED && device.source === "") return "";
  const kind = SourceKind[device.sourceKind]?.toLowerCase() ?? String(device.sourceKind);
  const scratch = device.sourceKind === SourceKind.QEMU ? `  scratch ${formatBytes(device.scratchBytes)}` : "";
  return `  from ${kind} ${escapeControls(device.source)}${scratch}`;
}

/** Where the archive is, when that is not the file path itself (an S3 object). */
function locationRow(status: BackupStatus): Array<[string, string]> {
  if (status.archiveLocation === "" || status.archiveLocation === status.backupFile) return [];
  return [["location", escapeControls(status.archiveLocation)]];
}

/** The summary `vmabackup status` prints: one labelled field per line, then the devices. */
export function formatStatusSummary(status: BackupStatus, now: Date): string {
  const rows: Array<[string, string]> = [
    ["uuid", escapeControls(status.uuid)],
    ["state", stateName(status.state)],
    ["file", escapeControls(status.backupFile)],
    ...locationRow(status),
    [
      "progress",
      `${formatPercent(status.transferredBytes, status.totalBytes)}  ` +
        `${formatBytes(status.transferredBytes)} of ${formatBytes(status.totalBytes)}`,
    ],
    [
      "zero",
      `${formatPercent(status.zeroBytes, status.transferredBytes)}  ` + `${formatBytes(status.zeroBytes)} not stored`,
    ],
    ["rate", formatRateRow(status, now)],
  ];
  if (status.state === BackupState.ACTIVE)
    rows.push(["eta", etaMs(status) === undefined ? "unknown" : formatEta(status)]);
  if (status.startTime !== undefined) rows.push(["started", timestampDate(status.startTime).toISOString()]);
  if (status.endTime !== undefined) rows.push(["ended", timestampDate(status.endTime).toISOString()]);
  if (status.requestId !== "") rows.push(["request", escapeControls(status.requestId)]);
  // Records written before stores have no count.
  if (status.writtenBytes > 0n || status.archiveLocation !== "") {
    rows.push(["written", `${formatBytes(status.writtenBytes)} stored`]);
  }
  if (status.errorMessage !== "") rows.push(["error", escapeControls(status.errorMessage)]);

  const width = Math.max(...rows.map(([label]) => label.length)) + 2;
  const lines = rows.map(([label, value]) => `${label.padEnd(width)}${value}`);
  lines.push("devices");
  const names = status.devices.map((device) => escapeControls(device.name));
  const nameWidth = Math.max(0, ...names.map((name) => name.length)) + 2;
  for (const [index, device] of status.devices.entries()) {
    lines.push(
      `  ${String(device.devId).padStart(3)}  ${names[index]!.padEnd(nameWidth)}` +
        `${formatPercent(device.transferredBytes, device.size).padStart(6)}  ` +
        `${formatBytes(device.transferredBytes)} of ${formatBytes(device.size)}  ` +
        `zero ${formatPercent(device.zeroBytes, device.transferredBytes)}` +
        formatPadding(device) +
        formatSource(device),
    );
  }
  return lines.join("\n");
}
