// Parses byte counts given on the command line: "512K", "50M", "1.5G", "2TiB"
// or plain bytes. Multiples are IEC (powers of 1024); "KB"/"MB" are refused
// rather than guessed, because they mean powers of 1000 elsewhere.
import { ArgumentSyntaxError } from "./parse-error.js";

const MULTIPLIERS: ReadonlyMap<string, number> = new Map([
  ["", 1],
  ["b", 1],
  ["k", 1024],
  ["kib", 1024],
  ["m", 1024 ** 2],
  ["mib", 1024 ** 2],
  ["g", 1024 ** 3],
  ["gib", 1024 ** 3],
  ["t", 1024 ** 4],
  ["tib", 1024 ** 4],
]);

const SIZE_PATTERN = /^(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)$/i;

/**
 * Returns the number of bytes `text` denotes. Fractions are allowed with a
 * unit and rounded down to whole bytes ("1.5K" is 1536).
 */
export function parseSize(text: string): number {
  const match = SIZE_PATTERN.exec(text.trim());
  if (match === null) {
    throw new ArgumentSyntaxError("expected a number of bytes with an optional unit K, M, G or T, e.g. 50M");
  }
  const [, digits, unit] = match;
  const multiplier = MULTIPLIERS.get((unit ?? "").toLowerCase());
  if (multiplier === undefined) {
    throw new ArgumentSyntaxError(`unknown unit "${unit}" (use K, M, G, T or KiB, MiB, GiB, TiB: multiples of 1024)`);
  }
  const amount = Number(digits);
  if (multiplier === 1 && !Number.isInteger(amount)) {
    throw new ArgumentSyntaxError("not a whole number of bytes");
  }
  const bytes = Math.floor(amount * multiplier);
  if (amount > 0 && bytes === 0) {
    // Rounding down to 0 would silently turn a tiny limit into "unlimited".
    throw new ArgumentSyntaxError("less than one byte");
  }
  if (!Number.isSafeInteger(bytes)) {
    throw new ArgumentSyntaxError("too large");
  }
  return bytes;
}
