// A single progress bar for long commands (vma verify/extract, or any other
// with a byte count): label, bar, percent, bytes done/total, rate. Drawn on
// the given stream (stderr by default) only when it is a terminal; elsewhere
// every call does nothing, so scripts and pipes see no control codes.
// cli-progress is loaded only for a terminal: it costs more start-up than a
// whole `vma list`.
import { formatBytes, formatDuration, formatRate } from "./format-size.js";

export interface ProgressBar {
  /** Sets the current value (same unit as the total). */
  update(value: number): void;
  /** Changes the total, e.g. once it becomes known. */
  setTotal(total: number): void;
  /** Removes the bar from the terminal. */
  stop(): void;
}

export interface ProgressBarOptions {
  /** Shown before the bar, e.g. "verify". */
  readonly label: string;
  /** Bytes expected; 0 or undefined when unknown (then no bar or percent). */
  readonly total: number | undefined;
  readonly stream?: NodeJS.WriteStream;
}

const NO_PROGRESS: ProgressBar = { update: () => undefined, setTotal: () => undefined, stop: () => undefined };

export async function createProgressBar(options: ProgressBarOptions): Promise<ProgressBar> {
  const stream = options.stream ?? process.stderr;
  if (!stream.isTTY) return NO_PROGRESS;
  const { default: cliProgress } = await import("cli-progress");
  const started = Date.now();
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: (barOptions, params) => {
        const elapsed = Date.now() - started;
        const rate = elapsed > 0 ? formatRate((params.value * 1000) / elapsed) : "-";
        if (params.total <= 0) {
          return `${options.label} ${formatBytes(params.value)}  ${rate}  ${formatDuration(elapsed)}`;
        }
        const percent = `${(Math.min(1, params.progress) * 100).toFixed(1)}%`.padStart(6);
        return (
          `${options.label} [${cliProgress.Format.BarFormat(Math.min(1, params.progress), barOptions)}] ${percent}  ` +
          `${formatBytes(params.value)} / ${formatBytes(params.total)}  ${rate}`
        );
      },
      barsize: 30,
      hideCursor: true,
      linewrap: true,
      clearOnComplete: true,
      // The commands handle their own end; cli-progress's SIGINT handler would delay Ctrl-C.
      gracefulExit: false,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(options.total ?? 0, 0);
  return {
    update: (value) => bar.update(value),
    setTotal: (total) => bar.setTotal(total),
    stop: () => bar.stop(),
  };
}
