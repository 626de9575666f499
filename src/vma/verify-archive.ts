// Reads a whole archive with the strict reader and sums up the verdict: the
// problems (capped, counted in full), missing clusters as problems or, with
// allowIncomplete, as warnings. Extraction runs through the same loop with
// hooks, so both commands judge an archive the same way.
import { headerWarnings } from "./header-warnings.js";
import { CompressedDataError } from "./open-archive.js";
import { readVma } from "./reader.js";
import { describeMissing } from "./reader-cluster-tracker.js";
import type { VmaExtent, VmaHeader, VmaMissingClusters, VmaProblem } from "./reader-types.js";

/** Problems kept in a report; the rest are only counted. */
export const PROBLEMS_LISTED = 1000;

export interface ArchiveVerdict {
  /** Valid, and complete unless incompleteness was allowed. */
  readonly ok: boolean;
  /** The header, when it could be trusted. */
  readonly header: VmaHeader | undefined;
  /** Problems in archive order, at most PROBLEMS_LISTED; missing clusters come last. */
  readonly problems: readonly VmaProblem[];
  /** All problems, including those not listed. */
  readonly problemCount: number;
  /** What Proxmox's vma cannot handle in a valid header (header-warnings.ts), and missing clusters when allowed. */
  readonly warnings: readonly string[];
  /** Devices (of those checked) with missing clusters. */
  readonly missing: readonly VmaMissingClusters[];
  /** Decompressed archive bytes read. */
  readonly archiveBytes: number;
  readonly extents: number;
  readonly clusters: number;
  readonly storedBlocks: number;
}

export interface VerifyOptions {
  /** Report missing clusters as warnings instead of problems. */
  readonly allowIncomplete: boolean;
  /** Which devices must be complete (default: all). */
  readonly requireComplete?: (devId: number) => boolean;
  /** Called with the trusted header, after the header's own problems (if any) were counted. */
  readonly onHeader?: (header: VmaHeader, problemsSoFar: number) => Promise<void> | void;
  /** Called for each extent, with the number of problems found so far. */
  readonly onExtent?: (extent: VmaExtent, problemsSoFar: number) => Promise<void> | void;
}

/** Reads `chunks` (a decompressed archive) to the end and judges it. */
export async function verifyArchive(
  chunks: AsyncIterable<Uint8Array>,
  options: VerifyOptions,
): Promise<ArchiveVerdict> {
  const problems: VmaProblem[] = [];
  let problemCount = 0;
  const addProblem = (problem: VmaProblem): void => {
    problemCount += 1;
    if (problems.length < PROBLEMS_LISTED) problems.push(problem);
  };
  let header: VmaHeader | undefined;
  // What Proxmox's vma handles badly in a valid header first, then missing clusters when allowed.
  const warnings: string[] = [];
  let archiveBytes = 0;
  let extents = 0;
  let clusters = 0;
  let storedBlocks = 0;
  let missing: VmaMissingClusters[] = [];
  try {
    for await (const event of readVma(chunks)) {
      switch (event.type) {
        case "problem":
          addProblem(event.problem);
          break;
        case "header":
          header = event.header;
          warnings.push(...headerWarnings(event.header));
          await options.onHeader?.(event.header, problemCount);
          break;
        case "extent":
          await options.onExtent?.(event.extent, problemCount);
          break;
        case "end":
          ({ archiveBytes, extents, clusters, storedBlocks } = event.summary);
          missing = event.summary.missing.filter((device) => options.requireComplete?.(device.devId) ?? true);
          break;
      }
    }
  } catch (error) {
    if (!(error instanceof CompressedDataError)) throw error;
    // Nothing after the damage was seen, so nothing is reported as missing.
    addProblem({ offset: error.offset, message: error.message });
    archiveBytes = error.offset;
  }
  for (const device of missing) {
    const message = describeMissing(device);
    if (options.allowIncomplete) warnings.push(message);
    else addProblem({ offset: archiveBytes, message });
  }
  return {
    ok: problemCount === 0,
    header,
    problems,
    problemCount,
    warnings,
    missing,
    archiveBytes,
    extents,
    clusters,
    storedBlocks,
  };
}

export interface HeaderVerdict {
  /** The header, when it could be trusted. */
  readonly header: VmaHeader | undefined;
  /** The header's problems. */
  readonly problems: readonly VmaProblem[];
}

/** Reads and checks only the header (for `vma list` and `vma config`); the rest is not read. */
export async function verifyArchiveHeader(chunks: AsyncIterable<Uint8Array>): Promise<HeaderVerdict> {
  const problems: VmaProblem[] = [];
  try {
    for await (const event of readVma(chunks)) {
      if (event.type === "problem") problems.push(event.problem);
      else if (event.type === "header") return { header: event.header, problems };
      else break;
    }
  } catch (error) {
    if (!(error instanceof CompressedDataError)) throw error;
    problems.push({ offset: error.offset, message: error.message });
  }
  return { header: undefined, problems };
}
