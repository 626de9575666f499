// The stores a server writes to, as the operator names them: the backup
// directory is the store "local" (the default target); each
// `--target NAME=s3://bucket/prefix` adds an S3 store, all sharing one S3
// client configuration (endpoint, region, path style, credentials file).
import type { ArchiveStore } from "./archive-store.js";
import { createLocalStore } from "./local/local-store.js";
import { createLazyS3Store, sharedS3Client } from "./s3/lazy-s3-store.js";
import type { S3ClientOptions } from "./s3/s3-client.js";
import { parseS3Url } from "./s3/s3-url.js";

/** The name of the backup directory's store, and the target when a request names none. */
export const DEFAULT_TARGET = "local";

const TARGET_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;

export interface TargetSpec {
  readonly name: string;
  readonly bucket: string;
  readonly prefix: string;
}

export class TargetConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TargetConfigError";
  }
}

/** Parses `NAME=s3://bucket/prefix`; TargetConfigError says what to fix. */
export function parseTarget(text: string): TargetSpec {
  const equals = text.indexOf("=");
  if (equals === -1) throw new TargetConfigError(`--target ${text}: expected NAME=s3://BUCKET/PREFIX`);
  const name = text.slice(0, equals);
  if (!TARGET_NAME.test(name)) {
    throw new TargetConfigError(
      `--target ${text}: the name must be 1-32 lower-case letters, digits, "-" or "_", starting with a letter or digit`,
    );
  }
  if (name === DEFAULT_TARGET) {
    throw new TargetConfigError(`--target ${text}: "${DEFAULT_TARGET}" is the backup directory's store`);
  }
  try {
    const { bucket, key } = parseS3Url(text.slice(equals + 1));
    return { name, bucket, prefix: key.replace(/\/+$/, "") };
  } catch (error) {
    throw new TargetConfigError(`--target ${text}: ${(error as Error).message}`);
  }
}

export interface StoreSetup {
  /** Real path of the backup directory (the "local" store). */
  readonly backupDir: string;
  readonly targets: readonly TargetSpec[];
  /** How to reach S3, for every S3 target. */
  readonly s3: S3ClientOptions;
}

/** The stores by name; the backup directory's first. Throws TargetConfigError on a name used twice. */
export function createStores(setup: StoreSetup): Map<string, ArchiveStore> {
  const stores = new Map<string, ArchiveStore>([
    [DEFAULT_TARGET, createLocalStore({ name: DEFAULT_TARGET, directory: setup.backupDir })],
  ]);
  if (setup.targets.length === 0) return stores;
  const client = sharedS3Client(setup.s3);
  for (const target of setup.targets) {
    if (stores.has(target.name)) throw new TargetConfigError(`--target ${target.name}: the name is used twice`);
    stores.set(
      target.name,
      createLazyS3Store({ name: target.name, client, bucket: target.bucket, prefix: target.prefix }),
    );
  }
  return stores;
}
