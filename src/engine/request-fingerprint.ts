// The canonical form of a Backup request, so that a request id is honoured
// only for the request it was first used with (AIP-155: a request id makes
// *the same request* idempotent). Two requests are the same when every field
// but the request id is equal, however they were encoded on the wire; the
// fingerprint is a hash of that canonical form, small enough to keep with
// the job.
import { createHash } from "node:crypto";
import type { BackupSpec, DeviceSource } from "./types.js";

/** Bumped if the canonical form ever changes (older fingerprints then never match). */
const FINGERPRINT_VERSION = "v1";

/** sha256 (hex) of the request's fields in a fixed order, config data by its own hash. */
export function requestFingerprint(spec: BackupSpec): string {
  const canonical = [
    FINGERPRINT_VERSION,
    spec.backupFile,
    spec.format,
    spec.devices.map((device) => [device.name, canonicalSource(device.source)]),
    spec.configs.map((config) => [config.name, createHash("sha256").update(config.data).digest("hex")]),
    spec.speedLimit,
  ];
  return `${FINGERPRINT_VERSION}:${createHash("sha256").update(JSON.stringify(canonical)).digest("hex")}`;
}

/**
 * A path source is its bare path, as before source kinds, so fingerprints
 * of path-only requests stay what they were; the other kinds are their
 * fields in a fixed order, tagged with the kind.
 */
function canonicalSource(source: DeviceSource): string | string[] {
  switch (source.kind) {
    case "path":
      return source.path;
    case "image":
      return ["image", source.path, source.format];
    case "nbd":
      return ["nbd", source.uri];
    case "qemu":
      return ["qemu", source.qmpSocket, source.drive];
  }
}
