// How `watch` (and `backup --watch`) shows the statuses it receives. The
// line and JSON renderers write one line per update, for pipes, logs and
// scripts; the progress-bar renderer (client-progress.ts) is for terminals.
import type { BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import { formatStatusJson } from "./format-json.js";
import { formatStatusLine } from "./format-status.js";

export interface StatusRenderer {
  /** Shows one status update; updates of several jobs may interleave. */
  update(status: BackupStatus): void;
  /** The watch is over (stream end, error or Ctrl-C): leave the output tidy. */
  stop(): void;
}

/** Where a renderer writes; process.stdout in the commands. */
export interface LineSink {
  write(text: string): unknown;
}

/** One human-readable line per update. */
export class StatusLineRenderer implements StatusRenderer {
  constructor(
    private readonly out: LineSink,
    private readonly now: () => Date = () => new Date(),
  ) {}

  update(status: BackupStatus): void {
    this.out.write(`${formatStatusLine(status, this.now())}\n`);
  }

  stop(): void {}
}

/** One JSON object (the proto3 JSON of the BackupStatus) per line. */
export class JsonLineRenderer implements StatusRenderer {
  constructor(private readonly out: LineSink) {}

  update(status: BackupStatus): void {
    this.out.write(`${formatStatusJson(status)}\n`);
  }

  stop(): void {}
}
