// Parses whole-number options such as `--limit 20`: digits only, at least 1,
// so that "0", "-3" or "1e3" are usage errors rather than surprises.
import { ArgumentSyntaxError } from "./parse-error.js";

export function parsePositiveCount(text: string): number {
  const trimmed = text.trim();
  if (!/^\d+$/.test(trimmed)) throw new ArgumentSyntaxError("expected a whole number, e.g. 20");
  const count = Number(trimmed);
  if (count < 1) throw new ArgumentSyntaxError("must be at least 1");
  if (!Number.isSafeInteger(count)) throw new ArgumentSyntaxError("too large");
  return count;
}
