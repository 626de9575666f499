// Where a path leads, as far as it exists: the real path of its longest
// existing prefix (symlinks followed, dangling ones included, `..` taken
// from the real place of what precedes it), with the missing rest appended.
// realpath() only answers for paths that exist; confinement needs an answer
// for missing ones too, or "does not exist" outside the roots would tell a
// caller what exists there (an existence oracle).
import * as fs from "node:fs/promises";
import * as path from "node:path";

/** Linux gives up after 40 symlinks in one lookup (ELOOP); so do we. */
const MAX_SYMLINKS = 40;

function components(text: string): string[] {
  return text.split("/").filter((part) => part !== "" && part !== ".");
}

/**
 * The place `absolutePath` leads to. Never throws for a missing or
 * unreadable component: the lookup stops there and the rest is appended
 * lexically (a missing directory has no symlinks below it).
 */
export async function pathDestination(absolutePath: string): Promise<string> {
  let pending = components(absolutePath);
  let current = "/";
  let symlinks = 0;
  while (pending.length > 0) {
    const name = pending.shift() as string;
    if (name === "..") {
      current = path.dirname(current);
      continue;
    }
    const next = path.join(current, name);
    let target: string | undefined;
    try {
      const stats = await fs.lstat(next);
      if (stats.isSymbolicLink()) target = await fs.readlink(next);
    } catch {
      return path.join(next, ...pending);
    }
    if (target === undefined) {
      current = next;
      continue;
    }
    symlinks += 1;
    if (symlinks > MAX_SYMLINKS) return path.join(next, ...pending);
    if (target.startsWith("/")) current = "/";
    pending = [...components(target), ...pending];
  }
  return current;
}
