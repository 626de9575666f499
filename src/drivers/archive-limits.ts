// The format layer names its limits VmaLimitError; the driver contract
// calls them ArchiveLimitError (kept apart so that every VMA target shares it).
import { VmaLimitError } from "../vma/encode-limits.js";
import { ArchiveLimitError } from "./driver.js";

export function withArchiveLimitErrors<T>(action: () => T): T {
  try {
    return action();
  } catch (error) {
    if (error instanceof VmaLimitError) throw new ArchiveLimitError(error.field, error.message);
    throw error;
  }
}
