// Reads the --config files of `vmabackup backup`. They are read here, by the
// client, and sent as bytes: the server stores them verbatim in the archive.
import { readFile, stat } from "node:fs/promises";
import { MAX_BLOB_SIZE } from "../vma/constants.js";
import { UsageError } from "./client-errors.js";
import type { NamedPath } from "./parse-named-path.js";

export interface ConfigContent {
  readonly name: string;
  readonly data: Uint8Array;
}

/**
 * Reads every config file. The size is checked before reading so that a
 * disk image passed by mistake is refused rather than loaded into memory.
 */
export async function readConfigFiles(configs: readonly NamedPath[]): Promise<ConfigContent[]> {
  const contents: ConfigContent[] = [];
  for (const { name, path } of configs) {
    try {
      const info = await stat(path);
      if (!info.isFile()) throw new UsageError(`config file "${path}" is not a regular file`);
      if (info.size > MAX_BLOB_SIZE) {
        throw new UsageError(`config file "${path}" has ${info.size} bytes; a config holds at most ${MAX_BLOB_SIZE}`);
      }
      contents.push({ name, data: await readFile(path) });
    } catch (error) {
      if (error instanceof UsageError) throw error;
      const reason = error instanceof Error ? error.message : String(error);
      throw new UsageError(`cannot read config file "${path}": ${reason}`);
    }
  }
  return contents;
}
