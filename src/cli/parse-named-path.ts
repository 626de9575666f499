// Parses the NAME=PATH arguments of `vmabackup backup`: --device and --config.
import { basename, resolve } from "node:path";
import { ArgumentSyntaxError } from "./parse-error.js";

/** A name inside the archive and the file it comes from. */
export interface NamedPath {
  readonly name: string;
  readonly path: string;
}

/**
 * Parses `--device NAME=PATH`. The path is made absolute against `cwd`
 * because the server, not this process, opens it; the server then checks it
 * against its source roots. The name is split off at the first "=".
 */
export function parseDeviceArgument(text: string, cwd: string = process.cwd()): NamedPath {
  const separator = text.indexOf("=");
  if (separator <= 0 || separator === text.length - 1) {
    throw new ArgumentSyntaxError("expected NAME=PATH (e.g. drive-scsi0=./disk.raw)");
  }
  return { name: text.slice(0, separator), path: resolve(cwd, text.slice(separator + 1)) };
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
