// Live progress bars for `watch` on a terminal: one bar per active job
// (percent, bytes done/total, rate and ETA as the server measures them,
// zero share, state). When a job ends its bar is replaced by the job's
// final status line. cli-progress does the terminal work (redrawing in
// place, several bars at once); the generic single bar of progress-bar.ts
// cannot show several jobs with their states.
import cliProgress from "cli-progress";
import type { BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import type { StatusRenderer } from "./client-render.js";
import { isTerminal, stateName } from "./client-status.js";
import { escapeControls } from "./escape-controls.js";
import { formatProgress, formatStatusLine } from "./format-status.js";

/** What each bar carries between updates; the formatter renders from it. */
interface BarPayload {
  readonly status: BackupStatus;
}

/** Enough of the uuid to tell concurrent jobs apart. */
const LABEL_LENGTH = 8;
const MIN_BAR_WIDTH = 10;
const MAX_BAR_WIDTH = 40;
/**
 * Room kept for the text after the bar, as wide as it usually gets
 * ("100.0%  1023.9 MiB / 1023.9 MiB  1023.9 MiB/s  ETA 59 min 59 s  zero 100.0%"):
 * sizing the bar from the text's actual length would make it jitter as the
 * numbers change.
 */
const TEXT_WIDTH = 75;
/** What the zero share ("  zero 100.0%") adds to the text. */
const ZERO_SHARE_WIDTH = 13;

/** A bar of `width` cells, the done share filled. */
function drawBar(progress: number, width: number): string {
  const filled = Math.round(Math.min(1, Math.max(0, progress)) * width);
  return "\u2588".repeat(filled) + "\u2591".repeat(width - filled);
}

/**
 * "e3f0ff21 ACTIVE [████░░░░] 45.0%  1.2 GiB / 2.0 GiB  120.0 MiB/s  ETA 8.0 s  zero 30.0%".
 * The bar takes what the text leaves of the terminal width. A terminal too
 * narrow for the whole text (80 columns) loses the zero share, the least
 * urgent figure while the job runs (the final line shows it), so that the
 * line is not cut off before rate and ETA. Both choices depend on the
 * terminal width only, so the line does not jump between updates.
 */
export function formatBarLine(status: BackupStatus, terminalWidth: number, now: Date): string {
  const progress = status.totalBytes > 0n ? Number(status.transferredBytes) / Number(status.totalBytes) : 0;
  const head = `${escapeControls(status.uuid.slice(0, LABEL_LENGTH))} ${stateName(status.state)}`;
  const fixed = head.length + 4;
  const zeroShare = terminalWidth >= fixed + MIN_BAR_WIDTH + TEXT_WIDTH;
  const tail = formatProgress(status, now, { zeroShare });
  const room = terminalWidth - fixed - (zeroShare ? TEXT_WIDTH : TEXT_WIDTH - ZERO_SHARE_WIDTH);
  const width = Math.min(MAX_BAR_WIDTH, Math.max(MIN_BAR_WIDTH, room));
  return `${head} [${drawBar(progress, width)}] ${tail}`;
}

export class ProgressBarRenderer implements StatusRenderer {
  private readonly multibar: cliProgress.MultiBar;
  private readonly bars = new Map<string, { bar: cliProgress.SingleBar; status: BackupStatus }>();

  constructor(
    stream: NodeJS.WriteStream,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.multibar = new cliProgress.MultiBar({
      stream,
      format: (_options, params, payload: BarPayload) => formatBarLine(payload.status, params.maxWidth, this.now()),
      hideCursor: true,
      // Cut lines at the terminal width: a wrapped line would break redrawing.
      linewrap: true,
      clearOnComplete: true,
      // This renderer is stopped by the watch, which handles SIGINT itself;
      // cli-progress's own handler would keep Ctrl-C from ending the process.
      gracefulExit: false,
    });
  }

  update(status: BackupStatus): void {
    const entry = this.bars.get(status.uuid);
    if (isTerminal(status.state)) {
      this.multibar.log(`${formatStatusLine(status, this.now())}\n`);
      if (entry === undefined) {
        this.multibar.update();
      } else {
        this.bars.delete(status.uuid);
        // remove() redraws, which also writes the final line logged above.
        this.multibar.remove(entry.bar);
      }
      // Without bars there is nothing to redraw until the next job; create()
      // starts the multibar again then.
      if (this.bars.size === 0) this.multibar.stop();
      return;
    }
    const payload: BarPayload = { status };
    const total = Number(status.totalBytes);
    const value = Number(status.transferredBytes);
    if (entry === undefined) {
      this.bars.set(status.uuid, { bar: this.multibar.create(total, value, payload), status });
    } else {
      entry.status = status;
      if (entry.bar.getTotal() !== total) entry.bar.setTotal(total);
      entry.bar.update(value, payload);
    }
  }

  stop(): void {
    // Jobs still running keep a line on screen, as their bars go away.
    for (const { status } of this.bars.values()) {
      this.multibar.log(`${formatStatusLine(status, this.now())}\n`);
    }
    this.bars.clear();
    this.multibar.update();
    this.multibar.stop();
  }
}
