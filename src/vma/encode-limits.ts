// Format limits of a VMA header, checked before anything is written: a plan
// (names and sizes only) either fits Proxmox's writer and readers or is refused
// with the field at fault.
import {
  CLUSTER_SIZE,
  HEADER_ALIGN,
  HEADER_FIXED_SIZE,
  MAX_BLOB_SIZE,
  MAX_CLUSTERS_PER_DEVICE,
  MAX_CONFIGS,
  MAX_DEVICES,
  MAX_HEADER_SIZE,
  VMSTATE_DEVICE_NAME,
} from "./constants.js";

/** A plan does not fit the VMA format; `field` names the part at fault. */
export class VmaLimitError extends Error {
  /** e.g. "configs[2].data", "configs", "devices", "devices[0].name". */
  readonly field: string;

  constructor(field: string, message: string) {
    super(message);
    this.name = "VmaLimitError";
    this.field = field;
  }
}

/** What goes into a header, by size only. */
export interface HeaderPlan {
  readonly configs: ReadonlyArray<{ readonly name: string; readonly size: number }>;
  readonly devices: ReadonlyArray<{ readonly name: string; readonly size: number }>;
}

/** The largest device: cluster numbers are 32 bits wide. */
export const MAX_DEVICE_SIZE = MAX_CLUSTERS_PER_DEVICE * CLUSTER_SIZE;
/** Each blob starts with a 2-byte little-endian length. */
export const BLOB_PREFIX_SIZE = 2;
export const UUID_SIZE = 16;

/** Payload bytes of a string blob: the UTF-8 name plus its terminating NUL. */
export function stringBlobSize(name: string): number {
  return Buffer.byteLength(name, "utf8") + 1;
}

/** Used blob-buffer bytes, counting the reserved zero byte at relative offset 0. */
export function blobBufferSizeForPlan(plan: HeaderPlan): number {
  let used = 1;
  for (const config of plan.configs) {
    used += BLOB_PREFIX_SIZE + stringBlobSize(config.name) + BLOB_PREFIX_SIZE + config.size;
  }
  for (const device of plan.devices) {
    used += BLOB_PREFIX_SIZE + stringBlobSize(device.name);
  }
  return used;
}

/** header_size for a used blob-buffer size: the fixed part plus the blobs padded to 512. */
export function headerSizeForBlobBuffer(blobBufferSize: number): number {
  return HEADER_FIXED_SIZE + Math.ceil(blobBufferSize / HEADER_ALIGN) * HEADER_ALIGN;
}

/** header_size of the archive a plan would produce; may exceed MAX_HEADER_SIZE. */
export function headerSizeForPlan(plan: HeaderPlan): number {
  return headerSizeForBlobBuffer(blobBufferSizeForPlan(plan));
}

/** Throws VmaLimitError when the plan cannot be written as a VMA header. */
export function checkHeaderPlan(plan: HeaderPlan): void {
  if (plan.configs.length > MAX_CONFIGS) {
    throw new VmaLimitError(
      "configs",
      `${plan.configs.length} configs given; a VMA archive holds at most ${MAX_CONFIGS}`,
    );
  }
  if (plan.devices.length > MAX_DEVICES) {
    throw new VmaLimitError(
      "devices",
      `${plan.devices.length} devices given; a VMA archive holds at most ${MAX_DEVICES}`,
    );
  }
  const configNames = new Set<string>();
  plan.configs.forEach((config, index) => {
    const field = `configs[${index}]`;
    checkConfigName(`${field}.name`, config.name);
    if (configNames.has(config.name)) {
      throw new VmaLimitError(`${field}.name`, `config name "${config.name}" is used twice`);
    }
    configNames.add(config.name);
    if (!Number.isSafeInteger(config.size) || config.size < 0) {
      throw new VmaLimitError(`${field}.data`, `config size ${config.size} is not a byte count`);
    }
    if (config.size > MAX_BLOB_SIZE) {
      throw new VmaLimitError(
        `${field}.data`,
        `config "${config.name}" is ${config.size} bytes; a VMA config holds at most ${MAX_BLOB_SIZE}`,
      );
    }
  });
  const deviceNames = new Set<string>();
  plan.devices.forEach((device, index) => {
    const field = `devices[${index}]`;
    checkDeviceName(`${field}.name`, device.name);
    if (deviceNames.has(device.name)) {
      throw new VmaLimitError(`${field}.name`, `device name "${device.name}" is used twice`);
    }
    deviceNames.add(device.name);
    checkDeviceSize(`${field}.size`, device.name, device.size);
  });
  checkHeaderSize(plan);
}

function checkConfigName(field: string, name: string): void {
  // `vma extract` writes each config to <dir>/<name>: it must be a plain file name.
  if (name === "" || name === "." || name === ".." || /[/\0]/u.test(name)) {
    throw new VmaLimitError(field, `config name "${name}" must be a plain file name (non-empty, no "/" or NUL)`);
  }
  checkStringBlob(field, name);
}

function checkDeviceName(field: string, name: string): void {
  // `vma extract` and qmrestore parse device names as \S+ and build file names from them.
  if (name === "" || /[\s/\0]/u.test(name)) {
    throw new VmaLimitError(field, `device name "${name}" must be non-empty with no whitespace, "/" or NUL`);
  }
  if (name === VMSTATE_DEVICE_NAME) {
    throw new VmaLimitError(field, `device name "${VMSTATE_DEVICE_NAME}" is reserved for VM state`);
  }
  checkStringBlob(field, name);
}

function checkStringBlob(field: string, name: string): void {
  const size = stringBlobSize(name);
  if (size > MAX_BLOB_SIZE) {
    throw new VmaLimitError(field, `name is ${size} bytes with its NUL; a VMA blob holds at most ${MAX_BLOB_SIZE}`);
  }
}

// Sizes need not be multiples of 512: QEMU disks always are, but plain image
// files need not be, and our reader restores any size exactly. (Proxmox's
// `vma extract` would drop a partial last sector.)
function checkDeviceSize(field: string, name: string, size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new VmaLimitError(field, `device "${name}" has size ${size}; it must be a positive byte count`);
  }
  if (size > MAX_DEVICE_SIZE) {
    throw new VmaLimitError(
      field,
      `device "${name}" has size ${size}; VMA devices hold at most ${MAX_DEVICE_SIZE} bytes`,
    );
  }
}

function checkHeaderSize(plan: HeaderPlan): void {
  const headerSize = headerSizeForPlan(plan);
  if (headerSize <= MAX_HEADER_SIZE) return;
  // Blame the configs when they alone do not fit; otherwise the device names tipped it over.
  const configsOnly = headerSizeForPlan({ configs: plan.configs, devices: [] });
  const field = configsOnly > MAX_HEADER_SIZE ? "configs" : "devices";
  throw new VmaLimitError(
    field,
    `the VMA header would be ${headerSize} bytes; Proxmox allows at most ${MAX_HEADER_SIZE} (configs and names too ` +
      `large)`,
  );
}

/** Throws unless `uuid` is the 16 raw bytes of an archive uuid. */
export function checkUuidBytes(uuid: Uint8Array): void {
  if (uuid.byteLength !== UUID_SIZE) {
    throw new RangeError(`archive uuid must be ${UUID_SIZE} bytes, got ${uuid.byteLength}`);
  }
}
