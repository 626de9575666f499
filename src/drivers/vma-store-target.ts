// The VMA writer on top of any store's upload (src/stores): the same
// cluster calls as a BackupTarget, but the bytes go wherever the upload
// puts them (a local file, an S3 multipart upload, through compression),
// and closing yields the store's committed reference instead of a path.
// This is the target the engine writes through.
import { parse as parseUuid } from "uuid";
import type { ArchiveRef, ArchiveUpload } from "../stores/archive-store.js";
import { VmaWriter } from "../vma/writer.js";
import type { BackupTarget } from "./driver.js";
import { VmaWriterTarget } from "./vma-writer-target.js";

export interface VmaStoreTargetOptions {
  /** The job uuid (canonical string form); becomes the archive's uuid. */
  readonly uuid: string;
  /** Fixed header ctime (Unix seconds), for byte-identical archives in tests. */
  readonly ctime?: number;
}

/** One VMA archive streamed into `upload`. Call order as BackupTarget; close() commits. */
export class VmaStoreTarget extends VmaWriterTarget implements BackupTarget {
  private readonly upload: ArchiveUpload;

  constructor(upload: ArchiveUpload, options: VmaStoreTargetOptions) {
    super(
      new VmaWriter(upload, {
        uuid: parseUuid(options.uuid),
        ...(options.ctime === undefined ? {} : { ctime: options.ctime }),
      }),
    );
    this.upload = upload;
  }

  /** What the job record keeps while the archive is written. */
  get pending(): ArchiveRef {
    return this.upload.pending;
  }

  get location(): string {
    return this.upload.location;
  }

  /** Archive bytes as stored (compressed, when compressing). */
  get bytesWritten(): number {
    return this.upload.bytesWritten;
  }

  /** Writes the rest, then commits: resolves with the committed reference. */
  async close(): Promise<ArchiveRef> {
    await this.writer.finish();
    return this.upload.commit();
  }

  async abort(): Promise<void> {
    await this.writer.abort();
    await this.upload.abort();
  }
}
