// Turns the drive names a client gave (a BlockBackend such as Proxmox's
// `drive-scsi0`, or a node name such as libvirt's `libvirt-1-format`) into
// the node that fleecing builds on, with its guest-visible size.

import { QemuSourceError } from "./errors.js";
import type { QmpClient } from "./qmp-client.js";

export interface ResolvedDrive {
  /** The name as the caller gave it. */
  readonly drive: string;
  /** What blockdev-backup copies from: the BlockBackend name, or the node name when given one. */
  readonly device: string;
  /** The live node: the scratch overlay's backing. */
  readonly nodeName: string;
  /** Guest-visible size in bytes. */
  readonly size: number;
}

interface BlockInfo {
  readonly device?: string;
  readonly qdev?: string;
  readonly inserted?: { readonly "node-name"?: string; readonly image?: { readonly "virtual-size"?: number } };
}

interface NamedNode {
  readonly "node-name"?: string;
  readonly image?: { readonly "virtual-size"?: number };
}

/** Resolves every drive or rejects with DRIVE_NOT_FOUND naming it and listing the names QEMU knows. */
export async function resolveDrives(client: QmpClient, drives: readonly string[]): Promise<ResolvedDrive[]> {
  const backends = await client.execute<BlockInfo[]>("query-block");
  const nodes = await client.execute<NamedNode[]>("query-named-block-nodes", { flat: true });
  return drives.map((drive) => resolveOne(drive, backends, nodes));
}

function resolveOne(drive: string, backends: readonly BlockInfo[], nodes: readonly NamedNode[]): ResolvedDrive {
  const backend = backends.find((info) => info.device !== undefined && info.device !== "" && info.device === drive);
  if (backend !== undefined) {
    const nodeName = backend.inserted?.["node-name"];
    const size = backend.inserted?.image?.["virtual-size"];
    if (nodeName === undefined || size === undefined) {
      throw new QemuSourceError("DRIVE_NOT_FOUND", `drive ${drive} has no medium inserted: nothing to back up`, {
        drive,
      });
    }
    return { drive, device: drive, nodeName, size };
  }
  const node = nodes.find((candidate) => candidate["node-name"] === drive);
  const size = node?.image?.["virtual-size"];
  if (node !== undefined && size !== undefined) {
    return { drive, device: drive, nodeName: drive, size };
  }
  throw new QemuSourceError(
    "DRIVE_NOT_FOUND",
    `QEMU has no drive or node named ${JSON.stringify(drive)}; it knows ${knownNames(backends, nodes)}`,
    { drive },
  );
}

/** BlockBackends first, then node names QEMU did not generate itself (those start with '#'). */
function knownNames(backends: readonly BlockInfo[], nodes: readonly NamedNode[]): string {
  const backendNames = backends.flatMap((info) => (info.device ? [info.device] : [])).sort();
  const nodeNames = nodes
    .flatMap((node) => {
      const name = node["node-name"];
      return name !== undefined && !name.startsWith("#") ? [name] : [];
    })
    .sort();
  const parts: string[] = [];
  if (backendNames.length > 0) parts.push(`drives ${backendNames.join(", ")}`);
  if (nodeNames.length > 0) parts.push(`nodes ${nodeNames.join(", ")}`);
  return parts.length > 0 ? parts.join("; ") : "no drives at all";
}
