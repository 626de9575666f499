// Which code opens which kind of source: the one place a new kind of source
// is wired into the engine. `path` is the file source; image, nbd and qemu
// are refused as "not wired yet" until their implementations are merged.
// INTEGRATOR: replace the three notWiredYet(...) below with the real openers
// (src/sources/image, src/sources/nbd, src/sources/qemu).
import type { Logger } from "pino";
import type { DiskSource } from "../sources/disk-source.js";
import { openFileSource } from "../sources/file/file-source.js";
import type { SourceConfinement } from "../sources/source-confinement.js";
import { SOURCE_REASON, SourceRefusal } from "../sources/source-refusal.js";
import { sourceField } from "./device-source.js";
import type { OpenedSources, SourceOpener, SourceOpeners } from "./source-opener.js";
import type { DeviceSourceKind } from "./types.js";

/** What openers may need from the server's settings. */
export interface SourceOpenerContext {
  /** The source roots: where path and image sources may lie. */
  readonly confinement: SourceConfinement;
  readonly stateDir: string;
  /** Where qemu sources keep scratch overlays. */
  readonly scratchDir: string;
  readonly nbdAllow: readonly string[];
  readonly qmpRoots: readonly string[];
  readonly logger: Logger;
}

/** Closes every source; never throws. */
export async function closeAll(sources: readonly DiskSource[]): Promise<void> {
  await Promise.allSettled(sources.map((source) => source.close()));
}

/** Opens each path device as a file or block device, in order; closes those opened on failure. */
function openPathSources(context: SourceOpenerContext): SourceOpener<"path"> {
  return async (request) => {
    const sources: DiskSource[] = [];
    try {
      for (const device of request.devices) {
        sources.push(
          await openFileSource(context.confinement, device.source.path, sourceField(device.source, device.index)),
        );
      }
    } catch (error) {
      await closeAll(sources);
      throw error;
    }
    return { sources, release: async () => undefined } satisfies OpenedSources;
  };
}

/** An opener for a kind whose implementation is not merged yet: refuses every device. */
function notWiredYet<K extends DeviceSourceKind>(kind: K): SourceOpener<K> {
  return (request) => {
    const first = request.devices[0];
    const field = first === undefined ? "devices" : `devices[${first.index}].${kind}`;
    return Promise.reject(
      new SourceRefusal(
        "failed-precondition",
        SOURCE_REASON.SOURCE_KIND_NOT_WIRED,
        `${field}: ${kind} sources are not wired yet in this build of the server`,
        field,
      ),
    );
  };
}

/** The openers of a server. */
export function createSourceOpeners(context: SourceOpenerContext): SourceOpeners {
  return {
    path: openPathSources(context),
    image: notWiredYet("image"),
    nbd: notWiredYet("nbd"),
    qemu: notWiredYet("qemu"),
  };
}
