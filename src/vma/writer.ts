// Streams a VMA archive to a sink: the header at the first flush, then extents
// of up to 58 clusters each. Cluster data is passed to the sink by reference,
// and at most one extent is written while the next one fills. Extents that
// store no block (runs of zero clusters: 512 bytes each) are gathered into
// one write of up to HEADER_ONLY_BATCH_BYTES, so that the holes of a large
// sparse disk cost a few writes, not one per 58 clusters.
import { CLUSTER_SIZE, EXTENT_HEADER_SIZE, WRITER_SLOTS_PER_EXTENT } from "./constants.js";
import { encodeZeroExtentHeaders } from "./encode-extent.js";
import { encodeHeader, type VmaHeaderConfig } from "./encode-header.js";
import { checkHeaderPlan, checkUuidBytes } from "./encode-limits.js";
import { WriterDevice } from "./writer-device.js";
import { VmaUsageError } from "./writer-errors.js";
import { ExtentBuilder } from "./writer-extent.js";

/** Where the archive bytes go, in order: each call appends its chunks. */
export interface VmaSink {
  write(chunks: readonly Uint8Array[]): Promise<void>;
}

export interface VmaWriterOptions {
  /** The archive uuid, 16 raw bytes; repeated in every extent. */
  readonly uuid: Uint8Array;
  /** Fixed header ctime in Unix seconds (tests); by default the time of the first flush, like Proxmox. */
  readonly ctime?: number;
}

type Phase = "registering" | "writing" | "finished";

/** The data of a cluster that stores no block: never read (mask 0). */
const NO_DATA = new Uint8Array(0);

/** Header-only extents gathered before they are written (2048 extents, 118,784 zero clusters). */
const HEADER_ONLY_BATCH_BYTES = 1024 * 1024;

export class VmaWriter {
  private readonly sink: VmaSink;
  private readonly uuid: Uint8Array;
  private readonly fixedCtime: number | undefined;
  private readonly configs: VmaHeaderConfig[] = [];
  private readonly devices: WriterDevice[] = [];
  private readonly extent = new ExtentBuilder();
  private phase: Phase = "registering";
  private headerQueued = false;
  private extentsQueued = 0;
  /** Queued extents whose write has not completed yet. */
  private unwritten = 0;
  /** Header-only extents not handed to the sink yet, and their clusters. */
  private batch: Uint8Array[] = [];
  private batchBytes = 0;
  private batchExtents = 0;
  /** Clusters passed to writeCluster so far. */
  private clustersAccepted = 0;
  /** Clusters whose extent write has settled: their memory is no longer referenced. */
  private clustersReleased = 0;
  /** Callers of whenReleased, in increasing `count` order. */
  private releaseWaiters: Array<{ readonly count: number; readonly resolve: () => void }> = [];
  /** Settles when every queued write has; never rejects (failures land in `failure`). */
  private writes: Promise<void> = Promise.resolve();
  /** The first sink error (or the abort); every later call rethrows it. */
  private failure: unknown = undefined;

  constructor(sink: VmaSink, options: VmaWriterOptions) {
    checkUuidBytes(options.uuid);
    if (options.ctime !== undefined && !Number.isSafeInteger(options.ctime)) {
      throw new RangeError(`ctime must be an integer number of seconds, got ${options.ctime}`);
    }
    this.sink = sink;
    this.uuid = Uint8Array.from(options.uuid);
    this.fixedCtime = options.ctime;
  }

  /** Number of extents handed to the sink so far (queued or written). */
  get extentCount(): number {
    return this.extentsQueued;
  }

  /** Adds a config; only before the first cluster. Throws VmaLimitError when it does not fit. */
  addConfig(name: string, data: Uint8Array): void {
    this.assertRegistering("addConfig");
    const config = { name, data: Uint8Array.from(data) };
    checkHeaderPlan(this.planWith([...this.configs, config], this.devices));
    this.configs.push(config);
  }

  /** Adds a device and returns its dev_id (1, 2, ...); only before the first cluster. */
  addDevice(name: string, size: number): number {
    this.assertRegistering("addDevice");
    checkHeaderPlan(this.planWith(this.configs, [...this.devices, { name, size }]));
    const devId = this.devices.length + 1;
    this.devices.push(new WriterDevice(devId, name, size));
    return devId;
  }

  /**
   * Stores one cluster: the blocks whose `storedMask` bit is set, by reference.
   * `data` must stay untouched until finish() (or abort()) settles. Resolves
   * at once unless an extent is ready while the previous one is still being
   * written; then it waits for that write (back-pressure).
   */
  async writeCluster(devId: number, clusterNum: number, data: Uint8Array, storedMask: number): Promise<void> {
    this.assertUsable("writeCluster");
    const device = this.device(devId);
    if (data.byteLength !== CLUSTER_SIZE) {
      throw new VmaUsageError(
        `cluster ${clusterNum} of ${device.label()} has ${data.byteLength} bytes; a cluster is ${CLUSTER_SIZE}`,
      );
    }
    const previous = this.accept(device, devId, clusterNum, data, storedMask);
    if (previous !== undefined) {
      await previous;
      this.throwIfFailed();
    }
  }

  /**
   * Stores `count` clusters from `firstCluster` on that read as zeros (mask
   * 0, nothing stored): what writeCluster does for each, without a call and
   * a promise per cluster, for the holes of large sparse disks.
   */
  async writeZeroClusters(devId: number, firstCluster: number, count: number): Promise<void> {
    this.assertUsable("writeZeroClusters");
    const device = this.device(devId);
    const end = firstCluster + count;
    let clusterNum = firstCluster;
    while (clusterNum < end) {
      // Whole extents at once, once the archive header is out (it goes with
      // the first extent) and no extent is half full: the same bytes.
      const wholeExtents = Math.floor((Math.min(end, device.clusterCount) - clusterNum) / WRITER_SLOTS_PER_EXTENT);
      if (this.headerQueued && this.extent.slotCount === 0 && wholeExtents > 0) {
        this.batchZeroExtents(device, clusterNum, wholeExtents);
        clusterNum += wholeExtents * WRITER_SLOTS_PER_EXTENT;
        continue;
      }
      const previous = this.accept(device, devId, clusterNum, NO_DATA, 0);
      clusterNum += 1;
      if (previous !== undefined) {
        await previous;
        this.throwIfFailed();
      }
    }
  }

  /** Adds one cluster; returns the write to wait for when an extent is ready while the previous one is in flight. */
  private accept(
    device: WriterDevice,
    devId: number,
    clusterNum: number,
    data: Uint8Array,
    storedMask: number,
  ): Promise<void> | undefined {
    device.recordCluster(clusterNum, storedMask);
    this.phase = "writing";
    this.extent.add(devId, clusterNum, data, storedMask);
    this.clustersAccepted += 1;
    if (this.extent.slotCount < WRITER_SLOTS_PER_EXTENT) return undefined;
    if (this.extent.isHeaderOnly && this.headerQueued) {
      this.batchExtent();
      return undefined;
    }
    return this.queueExtent();
  }

  /**
   * Resolves once no write references the data of any cluster passed so far
   * (successful or failed: the sink call has settled), so the caller may
   * reuse that memory. Clusters of the extent still being filled are released
   * only when later clusters, finish() or abort() push it out.
   */
  whenReleased(): Promise<void> {
    const count = this.clustersAccepted;
    if (this.clustersReleased >= count) return Promise.resolve();
    return new Promise((resolve) => this.releaseWaiters.push({ count, resolve }));
  }

  /** Declares a device done; throws naming the first cluster that was never written. */
  completeDevice(devId: number): void {
    this.assertUsable("completeDevice");
    this.device(devId).complete();
  }

  /** Writes the last extent (an empty one if there was none) and waits for every write. */
  async finish(): Promise<void> {
    this.assertUsable("finish");
    const incomplete = this.devices.find((device) => !device.isComplete);
    if (incomplete !== undefined) {
      throw new VmaUsageError(`cannot finish: ${incomplete.label()} was not completed`);
    }
    this.phase = "finished";
    // Proxmox always writes at least one extent: an empty one when no cluster was written.
    if (this.extent.slotCount > 0 || this.extentsQueued + this.batchExtents === 0) this.queueExtent();
    else this.writeBatch();
    await this.writes;
    this.throwIfFailed();
  }

  /** Stops writing: no queued extent starts any more; resolves once the write in flight settled. */
  async abort(): Promise<void> {
    this.failure ??= new VmaUsageError("the archive was aborted");
    this.phase = "finished";
    await this.writes;
    // Nothing is written any more, so the extent being filled holds no live reference either.
    this.release(this.clustersAccepted - this.clustersReleased);
  }

  /**
   * Hands the current extent to the sink after all earlier ones. Returns the
   * previous write when one is still pending, so the caller can wait for it.
   */
  private queueExtent(): Promise<void> | undefined {
    const batched = this.takeBatch();
    const clusters = this.extent.slotCount;
    const chunks = [...batched.chunks, ...this.extent.take(this.uuid)];
    this.extentsQueued += batched.extents;
    if (!this.headerQueued) {
      chunks.unshift(this.encodeHeader());
      this.headerQueued = true;
    }
    const previous = this.writes;
    const pendingBefore = this.unwritten;
    this.unwritten += 1;
    this.extentsQueued += 1;
    this.writes = previous.then(() => this.writeChunks(chunks, clusters));
    return pendingBefore > 0 ? previous : undefined;
  }

  /**
   * Keeps a header-only extent for a later write; writes the gathered ones
   * once they fill a batch. Extents stay in order: the next queued extent is
   * written after them, in the same write. Their clusters reference no
   * memory, so they count as released as soon as every earlier write has
   * settled (releases stay in order), not when the batch is written: a
   * caller waiting for its buffers must never wait for a batch to fill.
   */
  private batchExtent(): void {
    const clusters = this.extent.slotCount;
    this.batchExtents += 1;
    for (const chunk of this.extent.take(this.uuid)) {
      this.batch.push(chunk);
      this.batchBytes += chunk.byteLength;
    }
    this.writes = this.writes.then(() => this.release(clusters));
    if (this.batchBytes >= HEADER_ONLY_BATCH_BYTES) this.writeBatch();
  }

  /**
   * Gathers `extents` header-only extents of consecutive zero clusters of
   * `device` from `firstCluster`, as batchExtent does one by one, writing
   * the batch whenever it fills.
   */
  private batchZeroExtents(device: WriterDevice, firstCluster: number, extents: number): void {
    device.recordZeroRun(firstCluster, extents * WRITER_SLOTS_PER_EXTENT);
    this.clustersAccepted += extents * WRITER_SLOTS_PER_EXTENT;
    let clusterNum = firstCluster;
    let left = extents;
    while (left > 0) {
      const room = Math.max(1, Math.ceil((HEADER_ONLY_BATCH_BYTES - this.batchBytes) / EXTENT_HEADER_SIZE));
      const taken = Math.min(left, room);
      const headers = encodeZeroExtentHeaders(this.uuid, device.devId, clusterNum, taken, WRITER_SLOTS_PER_EXTENT);
      this.batch.push(headers);
      this.batchBytes += headers.byteLength;
      this.batchExtents += taken;
      const clusters = taken * WRITER_SLOTS_PER_EXTENT;
      this.writes = this.writes.then(() => this.release(clusters));
      if (this.batchBytes >= HEADER_ONLY_BATCH_BYTES) this.writeBatch();
      clusterNum += clusters;
      left -= taken;
    }
  }

  /** Hands the gathered header-only extents to the sink, after every earlier write. */
  private writeBatch(): void {
    const { chunks, extents } = this.takeBatch();
    if (extents === 0) return;
    this.unwritten += 1;
    this.extentsQueued += extents;
    this.writes = this.writes.then(() => this.writeChunks(chunks, 0));
  }

  private takeBatch(): { chunks: Uint8Array[]; extents: number } {
    const taken = { chunks: this.batch, extents: this.batchExtents };
    this.batch = [];
    this.batchBytes = 0;
    this.batchExtents = 0;
    return taken;
  }

  private async writeChunks(chunks: readonly Uint8Array[], clusters: number): Promise<void> {
    try {
      if (this.failure === undefined) await this.sink.write(chunks);
    } catch (error) {
      this.failure ??= error;
    } finally {
      this.unwritten -= 1;
      // Only now, with the sink call settled, may the clusters' memory be reused.
      this.release(clusters);
    }
  }

  /** Extents are written in order, so releases are too: wake the waiters now covered. */
  private release(clusters: number): void {
    this.clustersReleased += clusters;
    let woken = 0;
    while (woken < this.releaseWaiters.length && this.releaseWaiters[woken]!.count <= this.clustersReleased) {
      this.releaseWaiters[woken]!.resolve();
      woken += 1;
    }
    if (woken > 0) this.releaseWaiters = this.releaseWaiters.slice(woken);
  }

  private encodeHeader(): Uint8Array {
    return encodeHeader({
      uuid: this.uuid,
      // Proxmox takes the time when it writes the header, at the first flush.
      ctime: this.fixedCtime ?? Math.floor(Date.now() / 1000),
      configs: this.configs,
      devices: this.devices,
    });
  }

  private planWith(
    configs: readonly VmaHeaderConfig[],
    devices: ReadonlyArray<{ readonly name: string; readonly size: number }>,
  ): Parameters<typeof checkHeaderPlan>[0] {
    return {
      configs: configs.map((config) => ({ name: config.name, size: config.data.byteLength })),
      devices,
    };
  }

  private device(devId: number): WriterDevice {
    const device = Number.isInteger(devId) ? this.devices[devId - 1] : undefined;
    if (device === undefined) {
      const known = this.devices.length === 0 ? "no devices are registered" : `devices are 1..${this.devices.length}`;
      throw new VmaUsageError(`unknown dev_id ${devId}: ${known}`);
    }
    return device;
  }

  private assertRegistering(operation: string): void {
    this.assertUsable(operation);
    if (this.phase !== "registering") {
      throw new VmaUsageError(`${operation} after the first cluster: the header is already fixed`);
    }
  }

  private assertUsable(operation: string): void {
    this.throwIfFailed();
    if (this.phase === "finished") {
      throw new VmaUsageError(`${operation} after finish`);
    }
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}
