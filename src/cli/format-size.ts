// Human-readable byte counts, rates and shares for the client commands.
// Multiples are IEC (KiB = 1024 B), matching what parse-size accepts.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] as const;

/** "512 B", "1.5 KiB", "2.0 GiB". */
export function formatBytes(bytes: number | bigint): string {
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

/** "120.0 MiB/s". */
export function formatRate(bytesPerSecond: number): string {
  return `${formatBytes(Math.round(bytesPerSecond))}/s`;
}

/** "45.0%"; "-" when the whole is zero, where a share means nothing. */
export function formatPercent(part: number | bigint, whole: number | bigint): string {
  const total = Number(whole);
  if (total <= 0) return "-";
  return `${((Number(part) / total) * 100).toFixed(1)}%`;
}

/** "850 ms", "3.2 s", "4 min 05 s", "2 h 03 min". */
export function formatDuration(milliseconds: number): string {
  if (milliseconds < 1000) return `${Math.max(0, Math.round(milliseconds))} ms`;
  const seconds = milliseconds / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const wholeSeconds = Math.round(seconds);
  const minutes = Math.floor(wholeSeconds / 60);
  if (minutes < 60) return `${minutes} min ${String(wholeSeconds % 60).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}
