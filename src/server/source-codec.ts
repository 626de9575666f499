// Translation of device sources between protobuf and the engine: which of
// path, image, nbd and qemu a Device gives (exactly one), image formats,
// and the source kind of a status.
import { ImageFormat, SourceKind } from "../../gen/vmabackup/v1/backup_pb.js";
import type { Device } from "../../gen/vmabackup/v1/backup_pb.js";
import { EngineError, REASON } from "../engine/index.js";
import type { DeviceSource, DeviceSourceKind } from "../engine/index.js";

/** Engine format names by wire value; UNSPECIFIED is "" (the engine refuses it as missing). */
const IMAGE_FORMAT_FROM_PROTO: ReadonlyMap<number, string> = new Map([
  [ImageFormat.UNSPECIFIED, ""],
  [ImageFormat.RAW, "raw"],
  [ImageFormat.QCOW2, "qcow2"],
  [ImageFormat.VMDK, "vmdk"],
  [ImageFormat.VDI, "vdi"],
  [ImageFormat.VHDX, "vhdx"],
  [ImageFormat.QED, "qed"],
]);

const SOURCE_KIND_TO_PROTO: Readonly<Record<DeviceSourceKind, SourceKind>> = {
  path: SourceKind.PATH,
  image: SourceKind.IMAGE,
  nbd: SourceKind.NBD,
  qemu: SourceKind.QEMU,
};

export function toProtoSourceKind(kind: DeviceSourceKind): SourceKind {
  return SOURCE_KIND_TO_PROTO[kind];
}

/**
 * The source `devices[index]` gives. No source at all is an empty path (the
 * engine refuses it naming devices[index].path); more than one is refused here.
 */
export function toDeviceSource(device: Device, index: number): DeviceSource {
  const chosen = device.source;
  if (chosen.case !== undefined && device.path !== "") {
    const field = `devices[${index}]`;
    throw new EngineError(
      "invalid-argument",
      REASON.DEVICE_SOURCE_AMBIGUOUS,
      `${field}: gives both path and ${chosen.case}; give exactly one of path, image, nbd, qemu`,
      field,
    );
  }
  switch (chosen.case) {
    case undefined:
      return { kind: "path", path: device.path };
    case "image": {
      const format = IMAGE_FORMAT_FROM_PROTO.get(chosen.value.format);
      if (format === undefined) {
        const field = `devices[${index}].image.format`;
        throw new EngineError(
          "invalid-argument",
          REASON.IMAGE_FORMAT_UNKNOWN,
          `${field}: unknown value ${chosen.value.format}`,
          field,
        );
      }
      return { kind: "image", path: chosen.value.path, format };
    }
    case "nbd":
      return { kind: "nbd", uri: chosen.value.uri };
    case "qemu":
      return { kind: "qemu", qmpSocket: chosen.value.qmpSocket, drive: chosen.value.drive };
  }
}
