// Moved to the local-directory store (src/stores/local/archive-file.ts); kept
// for the engine's imports until it writes through an ArchiveStore.
export {
  ArchiveFile,
  type ArchiveFileOptions,
  PARTIAL_SUFFIX,
  publishWithoutOverwrite,
} from "../stores/local/archive-file.js";
