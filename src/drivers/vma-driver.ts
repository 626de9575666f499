// The VMA backup driver: the streaming VMA writer on top of an archive file
// that only gets its final name once the archive is complete.
import { parse as parseUuid } from "uuid";
import { checkHeaderPlan } from "../vma/encode-limits.js";
import { VmaWriter } from "../vma/writer.js";
import { ArchiveFile, type ArchiveFileOptions } from "../stores/local/archive-file.js";
import type {
  ArchivePlan,
  BackupDriver,
  BackupTarget,
  FileBackupTarget,
  FileIdentity,
  OpenTargetOptions,
  UploadTargetOptions,
} from "./driver.js";
import { withArchiveLimitErrors } from "./archive-limits.js";
import { VmaStoreTarget } from "./vma-store-target.js";
import { VmaWriterTarget } from "./vma-writer-target.js";
import type { ArchiveUpload } from "../stores/archive-store.js";

export { withArchiveLimitErrors } from "./archive-limits.js";

/** A VMA driver whose archive files use `fileOptions` (fault tests change how they flush). */
export function createVmaDriver(fileOptions: ArchiveFileOptions = {}): BackupDriver {
  return {
    format: "vma",
    fileSuffix: ".vma",

    checkPlan(plan: ArchivePlan): void {
      withArchiveLimitErrors(() => checkHeaderPlan(plan));
    },

    openUpload(upload: ArchiveUpload, options: UploadTargetOptions): BackupTarget {
      return new VmaStoreTarget(upload, options);
    },

    async open(options: OpenTargetOptions): Promise<FileBackupTarget> {
      // Parse first: a bad uuid must not leave a partial file behind.
      const uuid = parseUuid(options.uuid);
      const file = await ArchiveFile.create(options.path, options.confineTo, fileOptions);
      return new VmaTarget(file, new VmaWriter(file, { uuid }));
    },
  };
}

export const vmaDriver: BackupDriver = createVmaDriver();

class VmaTarget extends VmaWriterTarget implements FileBackupTarget {
  private readonly file: ArchiveFile;

  constructor(file: ArchiveFile, writer: VmaWriter) {
    super(writer);
    this.file = file;
  }

  get partialPath(): string {
    return this.file.partialPath;
  }

  get partialFile(): FileIdentity {
    return this.file.identity;
  }

  async close(): Promise<void> {
    // When either step fails the partial file stays until abort() removes it.
    await this.writer.finish();
    await this.file.commit();
  }

  async abort(): Promise<void> {
    await this.writer.abort();
    await this.file.discard();
  }
}
