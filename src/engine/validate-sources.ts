// Checks of device sources that need neither the filesystem nor a
// connection: the syntax of each kind's fields (invalid-argument), and
// whether the server's settings allow the kind and place at all
// (permission-denied, naming the setting). Opening checks the rest.
import * as path from "node:path";
import { EngineError } from "./errors.js";
import { isInside } from "./path-policy.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";
import { IMAGE_FORMATS } from "./types.js";
import type { DeviceSource } from "./types.js";
import type { SourceConfinement } from "../sources/source-confinement.js";

/** URI schemes of nbd sources: plain NBD over TCP or a unix socket (no TLS yet). */
export const NBD_SCHEMES = ["nbd:", "nbd+unix:"] as const;

/** Where an nbd source connects. */
export type NbdTarget =
  | { readonly transport: "unix"; readonly socket: string }
  | { readonly transport: "tcp"; readonly host: string; readonly port: number };

/** The IANA port of NBD, used when a URI names none. */
export const NBD_DEFAULT_PORT = 10809;

function invalid(reason: string, field: string, problem: string): EngineError {
  return new EngineError("invalid-argument", reason, `${field}: ${problem}`, field);
}

function denied(reason: string, field: string, problem: string): EngineError {
  return new EngineError("permission-denied", reason, `${field}: ${problem}`, field);
}

/** Where an NBD URI leads; throws NBD_URI_INVALID naming `field`. */
export function parseNbdUri(uri: string, field: string): NbdTarget {
  const problem = (what: string): EngineError =>
    invalid(
      REASON.NBD_URI_INVALID,
      field,
      `${quote(uri)} ${what}; write nbd+unix:///EXPORT?socket=/path/to.sock or nbd://HOST[:PORT]/EXPORT`,
    );
  if (uri === "") throw problem("is empty");
  if (uri.includes("\0")) throw problem("contains NUL");
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw problem("is not a URI");
  }
  if (!(NBD_SCHEMES as readonly string[]).includes(url.protocol)) {
    throw problem(`has scheme ${quote(url.protocol.slice(0, -1))}, not nbd or nbd+unix`);
  }
  if (url.username !== "" || url.password !== "") throw problem("holds a user name or password");
  if (url.protocol === "nbd+unix:") {
    if (url.host !== "") throw problem("names a host; an nbd+unix URI names a socket only");
    const socket = url.searchParams.get("socket");
    if (socket === null || socket === "") throw problem("has no socket= parameter");
    if (!path.isAbsolute(socket)) throw problem(`has socket ${quote(socket)}, not an absolute path`);
    return { transport: "unix", socket: path.resolve(socket) };
  }
  if (url.hostname === "") throw problem("names no host");
  const port = url.port === "" ? NBD_DEFAULT_PORT : Number(url.port);
  return { transport: "tcp", host: url.hostname.toLowerCase(), port };
}

/** True when an --nbd-allow entry (a socket directory, "host" or "host:port") admits `target`. */
function nbdAllows(entry: string, target: NbdTarget): boolean {
  if (entry.startsWith("/")) return target.transport === "unix" && isInside(path.resolve(entry), target.socket);
  if (target.transport !== "tcp") return false;
  let url: URL;
  try {
    url = new URL(`nbd://${entry}`);
  } catch {
    return false;
  }
  if (url.hostname.toLowerCase() !== target.host) return false;
  return url.port === "" || Number(url.port) === target.port;
}

/** The server settings that decide which sources are allowed. */
export interface SourceSettings {
  readonly nbdAllow: readonly string[];
  readonly qmpRoots: readonly string[];
  /** Where image files may lie (the source roots). */
  readonly confinement: Pick<SourceConfinement, "requestedSource">;
}

/** Throws the first syntax problem of a source's fields (invalid-argument). */
export function checkSourceSyntax(source: DeviceSource, index: number): void {
  const prefix = `devices[${index}]`;
  switch (source.kind) {
    case "path":
    case "image": {
      const field = source.kind === "path" ? `${prefix}.path` : `${prefix}.image.path`;
      if (source.path === "") {
        const hint = source.kind === "path" ? "; give a path, image, nbd or qemu source" : "";
        throw invalid(REASON.DEVICE_PATH_INVALID, field, `must not be empty${hint}`);
      }
      if (source.path.includes("\0")) throw invalid(REASON.DEVICE_PATH_INVALID, field, "contains NUL");
      if (source.kind === "image") checkImageFormat(source.format, `${prefix}.image.format`);
      return;
    }
    case "nbd":
      parseNbdUri(source.uri, `${prefix}.nbd.uri`);
      return;
    case "qemu": {
      const socketField = `${prefix}.qemu.qmp_socket`;
      if (source.qmpSocket === "") throw invalid(REASON.QMP_SOCKET_INVALID, socketField, "must not be empty");
      if (source.qmpSocket.includes("\0")) throw invalid(REASON.QMP_SOCKET_INVALID, socketField, "contains NUL");
      if (!path.isAbsolute(source.qmpSocket)) {
        throw invalid(REASON.QMP_SOCKET_INVALID, socketField, `${quote(source.qmpSocket)} is not an absolute path`);
      }
      const driveField = `${prefix}.qemu.drive`;
      if (source.drive === "") {
        throw invalid(REASON.DRIVE_NAME_INVALID, driveField, 'must not be empty; name the drive, e.g. "drive-scsi0"');
      }
      if (source.drive.includes("\0")) throw invalid(REASON.DRIVE_NAME_INVALID, driveField, "contains NUL");
      return;
    }
  }
}

function checkImageFormat(format: string, field: string): void {
  const known = IMAGE_FORMATS.join(", ");
  if (format === "") throw invalid(REASON.IMAGE_FORMAT_MISSING, field, `must be given (one of ${known})`);
  if (!(IMAGE_FORMATS as readonly string[]).includes(format)) {
    throw invalid(REASON.IMAGE_FORMAT_UNKNOWN, field, `${quote(format)} is not one of ${known}`);
  }
}

/**
 * Throws permission-denied when the server's settings do not allow a
 * source of this kind or place (call after checkSourceSyntax passed).
 */
export function checkSourceAllowed(source: DeviceSource, index: number, settings: SourceSettings): void {
  if (source.kind === "image") {
    // Lexically only: the image opener checks the file it actually opens.
    const field = `devices[${index}].image.path`;
    if (settings.confinement.requestedSource(source.path) === undefined) {
      throw denied(REASON.PATH_NOT_ALLOWED, field, `${quote(source.path)} is outside the allowed source directories`);
    }
  } else if (source.kind === "nbd") {
    const field = `devices[${index}].nbd.uri`;
    if (settings.nbdAllow.length === 0) {
      throw denied(
        REASON.NBD_SOURCES_DISABLED,
        field,
        "nbd sources are off on this server; its operator allows them with --nbd-allow (server setting nbdAllow)",
      );
    }
    const target = parseNbdUri(source.uri, field);
    if (!settings.nbdAllow.some((entry) => nbdAllows(entry, target))) {
      const where = target.transport === "unix" ? `socket ${quote(target.socket)}` : `${target.host}:${target.port}`;
      throw denied(REASON.NBD_TARGET_NOT_ALLOWED, field, `${where} is not one the server's --nbd-allow setting allows`);
    }
  } else if (source.kind === "qemu") {
    const field = `devices[${index}].qemu.qmp_socket`;
    if (settings.qmpRoots.length === 0) {
      throw denied(
        REASON.QEMU_SOURCES_DISABLED,
        field,
        "qemu sources are off on this server; its operator allows them with --qmp-root (server setting qmpRoots)",
      );
    }
    const socket = path.resolve(source.qmpSocket);
    if (!settings.qmpRoots.some((root) => isInside(path.resolve(root), socket))) {
      throw denied(
        REASON.QMP_SOCKET_NOT_ALLOWED,
        field,
        `${quote(source.qmpSocket)} is outside the directories of the server's --qmp-root setting`,
      );
    }
  }
}
