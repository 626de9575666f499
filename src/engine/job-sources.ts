// Opens every source of a job through the openers, kind by kind, and puts
// them back in request order. Refusals of the sources become EngineErrors;
// on any failure what was opened is closed and released again.
import type { DiskSource } from "../sources/disk-source.js";
import { SourceRefusal } from "../sources/source-refusal.js";
import { EngineError } from "./errors.js";
import { closeAll } from "./source-openers.js";
import type { OpenedSources, SourceOpeners, SourceOpenRequest } from "./source-opener.js";
import type { BackupSpec, DeviceSourceKind } from "./types.js";
import { DEVICE_SOURCE_KINDS } from "./types.js";

/** The opened sources of one job. */
export interface JobSources {
  /** In request order. */
  readonly sources: readonly DiskSource[];
  /** Closes every source, then releases what the openers hold; never throws. */
  close(): Promise<void>;
}

/** A refusal of a source as the engine reports it. */
export function engineErrorOf(error: unknown): unknown {
  if (!(error instanceof SourceRefusal)) return error;
  return new EngineError(error.code, error.reason, error.message, error.field);
}

async function releaseAll(opened: readonly OpenedSources[]): Promise<void> {
  for (const group of opened) {
    await closeAll(group.sources);
    await group.release().catch(() => undefined);
  }
}

/** Opens the sources of `spec`; throws EngineError (nothing stays open) when one is refused. */
export async function openJobSources(openers: SourceOpeners, spec: BackupSpec, jobId: string): Promise<JobSources> {
  const byIndex: Array<DiskSource | undefined> = new Array(spec.devices.length);
  const opened: OpenedSources[] = [];
  try {
    for (const kind of DEVICE_SOURCE_KINDS) {
      const request = requestOf(spec, kind, jobId);
      if (request.devices.length === 0) continue;
      // The opener is typed per kind; `request` holds only devices of `kind`.
      const open = openers[kind] as (request: SourceOpenRequest<typeof kind>) => Promise<OpenedSources>;
      const group = await open(request);
      opened.push(group);
      if (group.sources.length !== request.devices.length) {
        throw new Error(
          `the ${kind} opener returned ${group.sources.length} sources for ${request.devices.length} devices`,
        );
      }
      request.devices.forEach((device, position) => {
        byIndex[device.index] = group.sources[position];
      });
    }
  } catch (error) {
    await releaseAll(opened);
    throw engineErrorOf(error);
  }
  return { sources: byIndex as DiskSource[], close: () => releaseAll(opened) };
}

function requestOf(spec: BackupSpec, kind: DeviceSourceKind, jobId: string): SourceOpenRequest<DeviceSourceKind> {
  const devices = spec.devices.flatMap((device, index) =>
    device.source.kind === kind ? [{ index, name: device.name, source: device.source }] : [],
  );
  return { jobId, devices } as SourceOpenRequest<DeviceSourceKind>;
}
