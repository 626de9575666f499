// Client-chosen text (backup file, device and config names, error messages
// that quote them) must not drive the terminal it is printed on: an ESC or
// OSC sequence could retitle the window, clear the screen or hide the rest
// of a line. Human output goes through escapeControls; JSON output stays
// exact (JSON.stringify escapes what JSON requires, and scripts need the
// real names).

// C0 and DEL and C1 (Cc), plus the Unicode line separators and the
// bidirectional controls, which break or reorder a line as displayed.
const CONTROL = /[\p{Cc}\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;

/** `text` with every control character shown as \xNN (or \uNNNN above U+00FF). */
export function escapeControls(text: string): string {
  return text.replace(CONTROL, (char) => {
    const code = char.codePointAt(0) ?? 0;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}
