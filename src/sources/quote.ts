// Quoting of client-supplied strings inside error messages.

const MAX_QUOTED_CHARS = 64;

/** A value quoted for an error message: escaped (NUL, newlines, ...) and cut when long. */
export function quote(value: string): string {
  const shown = value.length > MAX_QUOTED_CHARS ? `${value.slice(0, MAX_QUOTED_CHARS)}…` : value;
  return JSON.stringify(shown);
}
