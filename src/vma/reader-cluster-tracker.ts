// Checks each used blockinfo slot against the device table and the clusters
// seen so far (docs/vma-format.md sections 5.4-6), and at the end tells which
// clusters of which device never arrived.
//
// A slot is rejected (its data is skipped) when its cluster cannot be placed:
// dev_id not in the table, cluster beyond the device end, a cluster written
// twice (the first copy wins), or vmstate out of order. Mask bits for blocks
// past the device end are reported but the slot is kept: its in-range blocks
// are unambiguous. Unlike Proxmox we report this even for mask 0xffff, which
// its reader clamps silently; its writer never sets those bits.
import { BLOCK_SIZE, BLOCKS_PER_CLUSTER, CLUSTER_SIZE } from "./constants.js";
import { hexMask } from "./decode-bytes.js";
import type { RawSlot } from "./decode-extent.js";
import { ClusterBitmap } from "./reader-cluster-bitmap.js";
import type { ClusterRange, VmaDevice, VmaMissingClusters, VmaProblem } from "./reader-types.js";

/** Ranges listed per device in a missing-clusters report. */
export const MISSING_RANGES_LISTED = 32;

const FULL_MASK = (1 << BLOCKS_PER_CLUSTER) - 1;

interface TrackedDevice {
  readonly device: VmaDevice;
  readonly seen: ClusterBitmap;
  /** The only cluster a vmstate stream accepts next. */
  nextVmstateCluster: number;
}

export interface SlotVerdict {
  readonly accepted: boolean;
  readonly problems: readonly VmaProblem[];
}

export class ClusterTracker {
  private readonly devices = new Map<number, TrackedDevice>();

  constructor(devices: ReadonlyMap<number, VmaDevice>) {
    for (const device of devices.values()) {
      // vmstate has no size check, so no bitmap: its order check finds repeats.
      const clusters = device.isVmstate ? 0 : device.clusterCount;
      this.devices.set(device.devId, { device, seen: new ClusterBitmap(clusters), nextVmstateCluster: 0 });
    }
  }

  check(slot: RawSlot): SlotVerdict {
    const tracked = this.devices.get(slot.devId);
    const where = `blockinfo slot ${slot.index}`;
    if (tracked === undefined) {
      return reject(slot, `${where} names dev_id ${slot.devId}, which is not in the header's device table`);
    }
    const { device } = tracked;
    if (device.isVmstate) {
      if (slot.cluster !== tracked.nextVmstateCluster) {
        return reject(
          slot,
          `${where}: vmstate cluster ${slot.cluster} out of order; expected cluster ${tracked.nextVmstateCluster}`,
        );
      }
      tracked.nextVmstateCluster += 1;
      return { accepted: true, problems: [] };
    }
    if (slot.cluster >= device.clusterCount) {
      return reject(
        slot,
        `${where}: cluster ${slot.cluster} is beyond the end of ${device.name} (size ${device.size}, clusters ` +
          `0..${device.clusterCount - 1})`,
      );
    }
    if (!tracked.seen.mark(slot.cluster)) {
      return reject(
        slot,
        `${where}: cluster ${slot.cluster} of ${device.name} was already written; expected each cluster once`,
      );
    }
    const allowed = allowedMask(device, slot.cluster);
    if ((slot.mask & ~allowed) !== 0) {
      return {
        accepted: true,
        problems: [
          {
            offset: slot.offset,
            message:
              `${where}: mask ${hexMask(slot.mask)} of cluster ${slot.cluster} stores blocks past the end of ` +
              `${device.name} (size ${device.size}); expected only bits of ${hexMask(allowed)}`,
          },
        ],
      };
    }
    return { accepted: true, problems: [] };
  }

  /** Devices with clusters no extent delivered, in dev_id order; vmstate is never incomplete. */
  missing(): VmaMissingClusters[] {
    const result: VmaMissingClusters[] = [];
    for (const { device, seen } of this.devices.values()) {
      if (device.isVmstate || seen.count === device.clusterCount) continue;
      const ranges: ClusterRange[] = [];
      for (const range of seen.unmarkedRanges()) {
        if (ranges.length === MISSING_RANGES_LISTED) break;
        ranges.push(range);
      }
      result.push({
        devId: device.devId,
        name: device.name,
        clusterCount: device.clusterCount,
        count: device.clusterCount - seen.count,
        ranges,
        allRanges: () => seen.unmarkedRanges(),
      });
    }
    return result;
  }
}

/** "drive-scsi0: clusters 1-15, 23-163839 missing (163832 of 163840)". */
export function describeMissing(missing: VmaMissingClusters): string {
  const listed = missing.ranges.map((range) =>
    range.first === range.last ? `${range.first}` : `${range.first}-${range.last}`,
  );
  const listedCount = missing.ranges.reduce((sum, range) => sum + range.last - range.first + 1, 0);
  if (missing.count > listedCount) listed.push(`and ${missing.count - listedCount} more`);
  const noun = missing.count === 1 ? "cluster" : "clusters";
  return `${missing.name}: ${noun} ${listed.join(", ")} missing (${missing.count} of ${missing.clusterCount})`;
}

/** Blocks that start inside the device; the last partial cluster allows fewer. */
function allowedMask(device: VmaDevice, cluster: number): number {
  const bytesInCluster = device.size - cluster * CLUSTER_SIZE;
  if (bytesInCluster >= CLUSTER_SIZE) return FULL_MASK;
  return (1 << Math.ceil(bytesInCluster / BLOCK_SIZE)) - 1;
}

function reject(slot: RawSlot, message: string): SlotVerdict {
  return { accepted: false, problems: [{ offset: slot.offset, message }] };
}
