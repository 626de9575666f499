// Parses the --config NAME=PATH arguments of `vmabackup backup` (devices: parse-device-source.ts).
import { basename } from "node:path";
import { ArgumentSyntaxError } from "./parse-error.js";

/** A name inside the archive and the file it comes from. */
export interface NamedPath {
  readonly name: string;
  readonly path: string;
}

/**
 * Parses `--config NAME=PATH` or `--config PATH`; without a name the file's
 * base name is the name inside the archive. The path stays as given: this
 * process reads the file itself.
 */
export function parseConfigArgument(text: string): NamedPath {
  const separator = text.indexOf("=");
  if (separator === -1) {
    const name = basename(text);
    if (name === "") {
      throw new ArgumentSyntaxError("expected PATH or NAME=PATH of a config file");
    }
    return { name, path: text };
  }
  if (separator === 0 || separator === text.length - 1) {
    throw new ArgumentSyntaxError("expected NAME=PATH (e.g. qemu-server.conf=./vm.conf)");
  }
  return { name: text.slice(0, separator), path: text.slice(separator + 1) };
}
