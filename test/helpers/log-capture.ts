// A pino logger that keeps every line in memory, so tests can read what the
// server logged (and prove what it never logged) and react to a line the
// moment it is written.
import { pino } from "pino";
import type { Logger } from "pino";

export interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [key: string]: unknown;
}

export interface CapturedLog {
  readonly logger: Logger;
  /** Every line so far, parsed. */
  readonly lines: readonly LogLine[];
  /** Everything logged so far, as written. */
  text(): string;
  /** Calls `listener` synchronously for every later line; returns the function that stops it. */
  onLine(listener: (line: LogLine) => void): () => void;
  /** Resolves with the first line (already written or later) that `match` accepts. */
  waitFor(match: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
}

export function captureLog(level = "debug"): CapturedLog {
  const raw: string[] = [];
  const lines: LogLine[] = [];
  const listeners = new Set<(line: LogLine) => void>();
  // pino writes each line synchronously to a destination with write().
  const destination = {
    write(text: string): void {
      raw.push(text);
      const line = JSON.parse(text) as LogLine;
      lines.push(line);
      for (const listener of [...listeners]) listener(line);
    },
  };
  const onLine = (listener: (line: LogLine) => void): (() => void) => {
    listeners.add(listener);
    return () => listeners.delete(listener);
  };
  return {
    logger: pino({ level }, destination),
    lines,
    text: () => raw.join(""),
    onLine,
    waitFor(match, timeoutMs = 10_000) {
      const found = lines.find(match);
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          stop();
          reject(new Error(`no matching log line within ${timeoutMs} ms`));
        }, timeoutMs);
        const stop = onLine((line) => {
          if (!match(line)) return;
          clearTimeout(timer);
          stop();
          resolve(line);
        });
      });
    },
  };
}
