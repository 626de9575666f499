// Parses the device options of `vmabackup backup`: --device NAME=PATH,
// --image NAME=PATH:FORMAT, --nbd NAME=URI and --qemu NAME=QMP_SOCKET:DRIVE,
// each into a Device of the request. Devices keep the order in which they
// were given across all four options (they get dev_ids 1..N in that order).
import { resolve } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ImageFormat } from "../../gen/vmabackup/v1/backup_pb.js";
import type { DeviceSchema } from "../../gen/vmabackup/v1/backup_pb.js";
import { ArgumentSyntaxError } from "./parse-error.js";

/** A device of the request, with its position on the command line. */
export interface DeviceArgument {
  /** Increases with each device option parsed, so devices keep their command-line order. */
  readonly order: number;
  readonly device: MessageInitShape<typeof DeviceSchema>;
}

let parsed = 0;

/** Image formats by the name given on the command line ("qcow2"), from the proto enum. */
export const IMAGE_FORMAT_NAMES: ReadonlyMap<string, ImageFormat> = new Map(
  Object.entries(ImageFormat)
    .filter((entry): entry is [string, ImageFormat] => typeof entry[1] === "number")
    .filter(([, value]) => value !== ImageFormat.UNSPECIFIED)
    .map(([key, value]) => [key.toLowerCase(), value]),
);

/** Splits NAME=REST at the first "="; both parts must be non-empty. */
function splitName(text: string, syntax: string): { readonly name: string; readonly rest: string } {
  const separator = text.indexOf("=");
  if (separator <= 0 || separator === text.length - 1) throw new ArgumentSyntaxError(`expected ${syntax}`);
  return { name: text.slice(0, separator), rest: text.slice(separator + 1) };
}

/** Splits at the last ":" (paths may hold colons, formats and drive names do not); both parts non-empty. */
function splitLast(text: string, syntax: string): readonly [string, string] {
  const separator = text.lastIndexOf(":");
  if (separator <= 0 || separator === text.length - 1) throw new ArgumentSyntaxError(`expected ${syntax}`);
  return [text.slice(0, separator), text.slice(separator + 1)];
}

function argument(device: DeviceArgument["device"]): DeviceArgument {
  parsed += 1;
  return { order: parsed, device };
}

/**
 * `--device NAME=PATH`: a raw file or block device. The path is made
 * absolute against `cwd` because the server, not this process, opens it.
 */
export function parseDeviceArgument(text: string, cwd: string = process.cwd()): DeviceArgument {
  const { name, rest } = splitName(text, "NAME=PATH (e.g. drive-scsi0=./disk.raw)");
  return argument({ name, path: resolve(cwd, rest) });
}

/** `--image NAME=PATH:FORMAT`: a disk image; FORMAT is one of raw, qcow2, vmdk, vdi, vhdx, qed. */
export function parseImageArgument(text: string, cwd: string = process.cwd()): DeviceArgument {
  const syntax = "NAME=PATH:FORMAT (e.g. drive-scsi0=./disk.qcow2:qcow2)";
  const { name, rest } = splitName(text, syntax);
  const [path, formatName] = splitLast(rest, syntax);
  const format = IMAGE_FORMAT_NAMES.get(formatName.toLowerCase());
  if (format === undefined) {
    throw new ArgumentSyntaxError(
      `unknown image format "${formatName}"; expected one of ${[...IMAGE_FORMAT_NAMES.keys()].join(", ")}`,
    );
  }
  return argument({ name, source: { case: "image", value: { path: resolve(cwd, path), format } } });
}

/** `--nbd NAME=URI`: an NBD export, e.g. nbd+unix:///export?socket=/run/x.sock or nbd://host:10809/export. */
export function parseNbdArgument(text: string): DeviceArgument {
  const syntax = "NAME=URI (e.g. drive-scsi0=nbd+unix:///drive0?socket=/run/vm100/nbd.sock)";
  const { name, rest } = splitName(text, syntax);
  if (!/^nbd(\+unix)?:\/\//.test(rest))
    throw new ArgumentSyntaxError(`expected ${syntax}; the URI starts nbd:// or nbd+unix://`);
  return argument({ name, source: { case: "nbd", value: { uri: rest } } });
}

/**
 * `--qemu NAME=QMP_SOCKET:DRIVE`: a drive of a running QEMU, split at the
 * last ":". The socket is made absolute against `cwd`.
 */
export function parseQemuArgument(text: string, cwd: string = process.cwd()): DeviceArgument {
  const syntax = "NAME=QMP_SOCKET:DRIVE (e.g. drive-scsi0=/run/qemu-server/100.qmp:drive-scsi0)";
  const { name, rest } = splitName(text, syntax);
  const [socket, drive] = splitLast(rest, syntax);
  return argument({ name, source: { case: "qemu", value: { qmpSocket: resolve(cwd, socket), drive } } });
}

/** The devices of all four options, in command-line order. */
export function devicesInOrder(
  ...groups: ReadonlyArray<readonly DeviceArgument[] | undefined>
): DeviceArgument["device"][] {
  return groups
    .flatMap((group) => group ?? [])
    .sort((a, b) => a.order - b.order)
    .map((entry) => entry.device);
}
