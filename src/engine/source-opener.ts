// The seam between the engine and the kinds of sources: an opener opens
// every device of its kind for one job at once (a qemu opener freezes all
// drives of one QEMU in one transaction) and hands back DiskSources plus a
// job-level release. Which opener serves which kind is wiring
// (source-openers.ts); the engine only calls them.
import type { DiskSource } from "../sources/disk-source.js";
import type { DeviceSource, DeviceSourceKind } from "./types.js";

/** The source of `kind`, narrowed. */
export type SourceOf<K extends DeviceSourceKind> = Extract<DeviceSource, { readonly kind: K }>;

export interface SourceOpenRequest<K extends DeviceSourceKind> {
  /** The job the sources are for (its uuid; names scratch files and exports). */
  readonly jobId: string;
  /** Every device of this kind in the job, in request order. */
  readonly devices: ReadonlyArray<{
    /** Position in the request: fields are "devices[index]....". */
    readonly index: number;
    readonly name: string;
    readonly source: SourceOf<K>;
  }>;
}

export interface OpenedSources {
  /** One per requested device, in the order of `request.devices`. */
  readonly sources: readonly DiskSource[];
  /**
   * Releases what the job holds beyond the sources (a qemu-storage-daemon,
   * a fleecing transaction's nodes); called once every source was closed.
   * Never throws.
   */
  release(): Promise<void>;
}

/**
 * Opens every device of one kind for a job. Rejects with a SourceRefusal
 * (or an EngineError) naming the field at fault; nothing stays open then.
 */
export type SourceOpener<K extends DeviceSourceKind> = (request: SourceOpenRequest<K>) => Promise<OpenedSources>;

/** One opener per source kind. */
export type SourceOpeners = { readonly [K in DeviceSourceKind]: SourceOpener<K> };
