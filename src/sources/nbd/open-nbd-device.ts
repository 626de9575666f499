// An NBD export named in a request, opened for a job: what goes wrong
// before the first read is the client's to fix and becomes a SourceRefusal
// on the device's field; the server settings that allow the URI are checked
// by the engine before this runs.
import type { DiskSource } from "../disk-source.js";
import { SOURCE_REASON, SourceRefusal, type SourceRefusalCode } from "../source-refusal.js";
import { NbdError, type NbdErrorCode } from "./errors.js";
import { type NbdSourceOptions, openNbdSource } from "./nbd-source.js";

const REFUSALS: Partial<Record<NbdErrorCode, { code: SourceRefusalCode; reason: string }>> = {
  NBD_BAD_URI: { code: "invalid-argument", reason: "NBD_URI_INVALID" },
  NBD_EXPORT_NOT_FOUND: { code: "not-found", reason: "NBD_EXPORT_NOT_FOUND" },
  NBD_UNREACHABLE: { code: "failed-precondition", reason: "NBD_UNREACHABLE" },
};

/** Connects to the export at `uri`; throws SourceRefusal naming `field`. */
export async function openNbdDevice(uri: string, field: string, options?: NbdSourceOptions): Promise<DiskSource> {
  let source: DiskSource;
  try {
    source = await openNbdSource(uri, options);
  } catch (error) {
    if (!(error instanceof NbdError)) throw error;
    const refusal = REFUSALS[error.code] ?? { code: "failed-precondition", reason: "NBD_HANDSHAKE_FAILED" };
    throw new SourceRefusal(refusal.code, refusal.reason, `${field}: ${error.message}`, field, { cause: error });
  }
  if (source.size === 0) {
    await source.close();
    throw new SourceRefusal(
      "failed-precondition",
      SOURCE_REASON.SOURCE_EMPTY,
      `${field}: the export ${uri} is empty`,
      field,
    );
  }
  return source;
}
