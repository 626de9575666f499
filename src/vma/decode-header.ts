// Decodes and checks the VMA archive header (docs/vma-format.md sections 2-4).
//
// Proxmox's reader checks, in this order: magic, header_size > 12288, MD5,
// version, blob buffer bounds; then it resolves config and device pointers.
// We check in the same order and, being strict, also report what Proxmox lets
// pass silently: nonzero reserved bytes and padding, half-set config slots,
// device entries with a size but no name (or the reverse), dev_id 0 or 255,
// names that are unsafe as file names, and duplicate names.
import { createHash } from "node:crypto";
import {
  CLUSTER_SIZE,
  DEV_INFO_SIZE,
  HEADER_FIXED_SIZE,
  HEADER_OFFSET,
  MAX_CLUSTERS_PER_DEVICE,
  MAX_CONFIGS,
  MAX_DEVICES,
  MAX_HEADER_SIZE,
  VMA_MAGIC,
  VMA_VERSION,
  VMSTATE_DEVICE_NAME,
} from "./constants.js";
import { decodeBlobs, resolveString, type BlobTable } from "./decode-blobs.js";
import { firstNonZero, formatUuid, hexBytes, readUint64 } from "./decode-bytes.js";
import type { VmaConfig, VmaDevice, VmaHeader, VmaProblem } from "./reader-types.js";

const MD5_SIZE = 16;
const DEV_ENTRY_COUNT = 256;
const DEV_NAME_PTR = 0;
const DEV_RESERVED_1 = 4;
const DEV_SIZE = 8;
const DEV_RESERVED_2 = 16;
const RESERVED_AFTER_FIELDS = { start: 60, end: HEADER_OFFSET.configNames } as const;
const RESERVED_BEFORE_DEV_INFO = {
  start: HEADER_OFFSET.configData + 4 * MAX_CONFIGS,
  end: HEADER_OFFSET.devInfo,
} as const;

export type HeaderSizeResult = { readonly headerSize: number } | { readonly problem: VmaProblem };

/**
 * Checks the magic and header_size of the first bytes of an archive (at least
 * 60, normally the 12288-byte fixed part). header_size above 512 KiB, the
 * largest header Proxmox's writer makes, is refused so memory stays bounded.
 */
export function decodeHeaderSize(prefix: Buffer): HeaderSizeResult {
  const magic = prefix.subarray(0, VMA_MAGIC.length);
  if (!magic.equals(VMA_MAGIC)) {
    return { problem: { offset: 0, message: `expected the VMA magic "56 4d 41 00", found "${hexBytes(magic)}"` } };
  }
  if (prefix.length < HEADER_OFFSET.headerSize + 4) {
    return {
      problem: { offset: prefix.length, message: `the archive ends after ${prefix.length} bytes, inside the header` },
    };
  }
  const headerSize = prefix.readUInt32BE(HEADER_OFFSET.headerSize);
  if (headerSize <= HEADER_FIXED_SIZE) {
    return {
      problem: {
        offset: HEADER_OFFSET.headerSize,
        message:
          `header_size ${headerSize}; expected more than ${HEADER_FIXED_SIZE} (the fixed part plus the blob ` +
          `buffer)`,
      },
    };
  }
  if (headerSize > MAX_HEADER_SIZE) {
    return {
      problem: {
        offset: HEADER_OFFSET.headerSize,
        message:
          `header_size ${headerSize}; expected at most ${MAX_HEADER_SIZE}, the largest header Proxmox's ` +
          `writer makes`,
      },
    };
  }
  return { headerSize };
}

export interface HeaderDecodeResult {
  /** Present when the fields could be decoded (even if problems were found). */
  readonly header: VmaHeader | undefined;
  readonly problems: readonly VmaProblem[];
  /**
   * False when the header fails a check Proxmox rejects it for (magic, size,
   * MD5, version, blob bounds): nothing after it can be read with confidence.
   */
  readonly trusted: boolean;
}

/** Decodes a whole header (`bytes` is exactly header_size long, archive offset 0). */
export function decodeHeader(bytes: Buffer): HeaderDecodeResult {
  const sizeResult = decodeHeaderSize(bytes);
  if ("problem" in sizeResult) return { header: undefined, problems: [sizeResult.problem], trusted: false };
  const problems: VmaProblem[] = [];
  let trusted = true;

  const stored = bytes.subarray(HEADER_OFFSET.md5, HEADER_OFFSET.md5 + MD5_SIZE);
  const computed = headerMd5(bytes);
  if (!computed.equals(stored)) {
    trusted = false;
    problems.push({
      offset: 0,
      message:
        `header checksum mismatch: md5 of bytes 0..${bytes.length - 1} is ${computed.toString("hex")}, the ` +
        `header stores ${stored.toString("hex")}`,
    });
  }
  const version = bytes.readUInt32BE(HEADER_OFFSET.version);
  if (version !== VMA_VERSION) {
    trusted = false;
    problems.push({ offset: HEADER_OFFSET.version, message: `version ${version}; expected ${VMA_VERSION}` });
  }
  const blobBufferOffset = bytes.readUInt32BE(HEADER_OFFSET.blobBufferOffset);
  const blobBufferSize = bytes.readUInt32BE(HEADER_OFFSET.blobBufferSize);
  const blobsInBounds = blobBufferOffset >= HEADER_FIXED_SIZE && blobBufferOffset + blobBufferSize <= bytes.length;
  if (!blobsInBounds) {
    trusted = false;
    problems.push({
      offset: HEADER_OFFSET.blobBufferOffset,
      message:
        `blob buffer at ${blobBufferOffset} with size ${blobBufferSize}; expected it to start at or after ` +
        `${HEADER_FIXED_SIZE} and end within header_size ${bytes.length}`,
    });
  }

  reportNonZero(problems, bytes, RESERVED_AFTER_FIELDS.start, RESERVED_AFTER_FIELDS.end, "reserved header bytes");
  reportNonZero(problems, bytes, RESERVED_BEFORE_DEV_INFO.start, RESERVED_BEFORE_DEV_INFO.end, "reserved header bytes");

  let configs: VmaConfig[] = [];
  let devices = new Map<number, VmaDevice>();
  if (blobsInBounds) {
    reportNonZero(problems, bytes, HEADER_FIXED_SIZE, blobBufferOffset, "bytes before the blob buffer");
    reportNonZero(
      problems,
      bytes,
      blobBufferOffset + blobBufferSize,
      bytes.length,
      "header padding after the blob buffer",
    );
    const table = decodeBlobs(bytes, blobBufferOffset, blobBufferSize);
    problems.push(...table.problems);
    configs = decodeConfigs(bytes, table, problems);
    devices = decodeDevices(bytes, table, problems);
  }

  const uuidBytes = Buffer.from(bytes.subarray(HEADER_OFFSET.uuid, HEADER_OFFSET.uuid + 16));
  const header: VmaHeader = {
    version,
    uuid: formatUuid(uuidBytes),
    uuidBytes,
    ctime: Number(bytes.readBigInt64BE(HEADER_OFFSET.ctime)),
    headerSize: bytes.length,
    blobBufferOffset,
    blobBufferSize,
    configs,
    devices,
  };
  return { header, problems, trusted };
}

/** MD5 of the header with its md5 field taken as zero. */
function headerMd5(bytes: Buffer): Buffer {
  return createHash("md5")
    .update(bytes.subarray(0, HEADER_OFFSET.md5))
    .update(Buffer.alloc(MD5_SIZE))
    .update(bytes.subarray(HEADER_OFFSET.md5 + MD5_SIZE))
    .digest();
}

function reportNonZero(problems: VmaProblem[], bytes: Buffer, start: number, end: number, what: string): void {
  const index = firstNonZero(bytes, start, end);
  if (index >= 0) {
    problems.push({
      offset: index,
      message:
        `${what} ${start}..${end - 1} must be zero; byte ${index} is ` +
        `0x${bytes[index]!.toString(16).padStart(2, "0")}`,
    });
  }
}

function decodeConfigs(bytes: Buffer, table: BlobTable, problems: VmaProblem[]): VmaConfig[] {
  const configs: VmaConfig[] = [];
  const names = new Set<string>();
  for (let slot = 0; slot < MAX_CONFIGS; slot++) {
    const nameField = HEADER_OFFSET.configNames + 4 * slot;
    const dataField = HEADER_OFFSET.configData + 4 * slot;
    const namePointer = bytes.readUInt32BE(nameField);
    const dataPointer = bytes.readUInt32BE(dataField);
    if (namePointer === 0 && dataPointer === 0) continue;
    if (namePointer === 0 || dataPointer === 0) {
      // Proxmox skips such a slot silently; no writer of its makes one.
      const [field, has, lacks] = namePointer === 0 ? [dataField, "data", "name"] : [nameField, "name", "data"];
      problems.push({
        offset: field,
        message: `config slot ${slot} has a ${has} pointer but no ${lacks} pointer; expected both or neither`,
      });
      continue;
    }
    const name = resolveString(table, namePointer);
    if ("error" in name) {
      problems.push({ offset: nameField, message: `config slot ${slot} name: ${name.error}` });
      continue;
    }
    const data = table.blobs.get(dataPointer);
    if (data === undefined) {
      problems.push({
        offset: dataField,
        message: `config slot ${slot} data: pointer ${dataPointer} is not the start of a blob`,
      });
      continue;
    }
    const unsafe = unsafeConfigName(name.name);
    if (unsafe !== undefined) {
      problems.push({ offset: nameField, message: `config slot ${slot} name "${name.name}" ${unsafe}` });
    } else if (names.has(name.name)) {
      problems.push({
        offset: nameField,
        message: `config slot ${slot} name "${name.name}" is used by an earlier config; expected unique names`,
      });
    }
    names.add(name.name);
    configs.push({ slot, name: name.name, data });
  }
  return configs;
}

/** Why a config name cannot be a file name in the extract directory, or undefined. */
function unsafeConfigName(name: string): string | undefined {
  if (name === "" || name === "." || name === "..") return "is not a file name";
  if (name.includes("/")) return 'contains "/"; expected a plain file name';
  return undefined;
}

function decodeDevices(bytes: Buffer, table: BlobTable, problems: VmaProblem[]): Map<number, VmaDevice> {
  const devices = new Map<number, VmaDevice>();
  const names = new Set<string>();
  for (let devId = 0; devId < DEV_ENTRY_COUNT; devId++) {
    const entry = HEADER_OFFSET.devInfo + DEV_INFO_SIZE * devId;
    const namePointer = bytes.readUInt32BE(entry + DEV_NAME_PTR);
    const size = readUint64(bytes, entry + DEV_SIZE);
    reportNonZero(problems, bytes, entry + DEV_RESERVED_1, entry + DEV_SIZE, `dev_info[${devId}] reserved bytes`);
    reportNonZero(problems, bytes, entry + DEV_RESERVED_2, entry + DEV_INFO_SIZE, `dev_info[${devId}] reserved bytes`);
    if (namePointer === 0 && size === 0) continue;
    if (devId === 0) {
      problems.push({
        offset: entry,
        message: "dev_info[0] is in use; dev_id 0 is reserved and its entry must be zero",
      });
      continue;
    }
    if (namePointer === 0 || size === 0) {
      // Proxmox ignores such an entry; no writer of its makes one.
      const message = namePointer === 0 ? `has size ${size} but no name` : "has a name but size 0";
      problems.push({ offset: entry, message: `dev_info[${devId}] ${message}; expected both or neither` });
      continue;
    }
    const name = resolveString(table, namePointer);
    if ("error" in name) {
      problems.push({ offset: entry + DEV_NAME_PTR, message: `dev_info[${devId}] name: ${name.error}` });
      continue;
    }
    if (typeof size === "bigint" || size > MAX_CLUSTERS_PER_DEVICE * CLUSTER_SIZE) {
      problems.push({
        offset: entry + DEV_SIZE,
        message:
          `dev_info[${devId}] size ${size}; expected at most ${MAX_CLUSTERS_PER_DEVICE * CLUSTER_SIZE} (2^32 ` +
          `clusters)`,
      });
      continue;
    }
    if (devId > MAX_DEVICES) {
      problems.push({
        offset: entry,
        message: `dev_id ${devId} is in use; expected 1..${MAX_DEVICES} (Proxmox's tools skip 255)`,
      });
    }
    const unsafe = unsafeDeviceName(name.name);
    if (unsafe !== undefined) {
      problems.push({ offset: entry + DEV_NAME_PTR, message: `dev_info[${devId}] name "${name.name}" ${unsafe}` });
    } else if (names.has(name.name)) {
      problems.push({
        offset: entry + DEV_NAME_PTR,
        message: `dev_info[${devId}] name "${name.name}" is used by an earlier device; expected unique names`,
      });
    }
    names.add(name.name);
    devices.set(devId, {
      devId,
      name: name.name,
      size,
      clusterCount: Math.ceil(size / CLUSTER_SIZE),
      isVmstate: name.name === VMSTATE_DEVICE_NAME,
    });
  }
  return devices;
}

/** Why a device name breaks `vma extract` or qmrestore (which parse \S+), or undefined. */
function unsafeDeviceName(name: string): string | undefined {
  if (name === "") return "is empty";
  if (/[\s/]/u.test(name)) return 'contains whitespace or "/"; expected a name matching \\S+ without "/"';
  return undefined;
}
