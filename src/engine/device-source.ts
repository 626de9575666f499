// What the engine says about a device's source without opening it: where it
// is (for status, locks and logs) and which request field names it.
import type { DeviceSource } from "./types.js";

/** Where a source is, as the request gave it: a path, a URI, or "QMP_SOCKET:DRIVE". */
export function sourceLocation(source: DeviceSource): string {
  switch (source.kind) {
    case "path":
    case "image":
      return source.path;
    case "nbd":
      return source.uri;
    case "qemu":
      return `${source.qmpSocket}:${source.drive}`;
  }
}

/** The request field that names the source of `devices[index]`, e.g. "devices[2].nbd.uri". */
export function sourceField(source: DeviceSource, index: number): string {
  switch (source.kind) {
    case "path":
      return `devices[${index}].path`;
    case "image":
      return `devices[${index}].image.path`;
    case "nbd":
      return `devices[${index}].nbd.uri`;
    case "qemu":
      return `devices[${index}].qemu.qmp_socket`;
  }
}
