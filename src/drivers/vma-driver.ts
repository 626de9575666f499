// The VMA backup driver: the streaming VMA writer on top of a store's upload.
import { checkHeaderPlan } from "../vma/encode-limits.js";
import type { ArchivePlan, BackupDriver, BackupTarget, UploadTargetOptions } from "./driver.js";
import { withArchiveLimitErrors } from "./archive-limits.js";
import { VmaStoreTarget } from "./vma-store-target.js";
import type { ArchiveUpload } from "../stores/archive-store.js";

export const vmaDriver: BackupDriver = {
  format: "vma",
  fileSuffix: ".vma",

  checkPlan(plan: ArchivePlan): void {
    withArchiveLimitErrors(() => checkHeaderPlan(plan));
  },

  openUpload(upload: ArchiveUpload, options: UploadTargetOptions): BackupTarget {
    return new VmaStoreTarget(upload, options);
  },
};
