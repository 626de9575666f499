// An S3 target whose SDK is loaded on first use: @aws-sdk/client-s3 adds
// about 32 MiB to the daemon's memory, which a server with no S3 target (or
// one not used yet) should not pay. Behaves exactly as the store it loads.
import type { Readable } from "node:stream";
import type { S3Client } from "@aws-sdk/client-s3";
import type { ArchiveInfo, ArchiveRef, ArchiveStore, ArchiveUpload, Removal } from "../archive-store.js";
import type { S3ClientOptions } from "./s3-client.js";
import { formatS3Url, normalizeS3Prefix } from "./s3-url.js";

export interface LazyS3StoreOptions {
  readonly name: string;
  readonly bucket: string;
  readonly prefix?: string;
  /** Creates the client once for every target of a server; called on first use. */
  readonly client: () => Promise<S3Client>;
}

/** Loads the SDK once per server: every S3 target shares one client. */
export function sharedS3Client(options: S3ClientOptions): () => Promise<S3Client> {
  let client: Promise<S3Client> | undefined;
  return () => {
    client ??= import("./s3-client.js").then(({ createS3Client }) => createS3Client(options));
    return client;
  };
}

export function createLazyS3Store(options: LazyS3StoreOptions): ArchiveStore {
  return new LazyS3Store(options);
}

class LazyS3Store implements ArchiveStore {
  readonly name: string;
  private readonly options: LazyS3StoreOptions;
  private loaded: Promise<ArchiveStore> | undefined;

  constructor(options: LazyS3StoreOptions) {
    this.name = options.name;
    this.options = options;
  }

  private store(): Promise<ArchiveStore> {
    this.loaded ??= Promise.all([this.options.client(), import("./s3-store.js")]).then(([client, { createS3Store }]) =>
      createS3Store({ name: this.name, client, bucket: this.options.bucket, prefix: this.options.prefix ?? "" }),
    );
    return this.loaded;
  }

  location(key: string): string {
    return formatS3Url(this.options.bucket, normalizeS3Prefix(this.options.prefix) + key);
  }

  async create(key: string): Promise<ArchiveUpload> {
    return (await this.store()).create(key);
  }

  async findCommitted(pending: ArchiveRef): Promise<ArchiveRef | undefined> {
    return (await this.store()).findCommitted(pending);
  }

  async stat(ref: ArchiveRef): Promise<ArchiveInfo | undefined> {
    return (await this.store()).stat(ref);
  }

  async remove(ref: ArchiveRef): Promise<Removal> {
    return (await this.store()).remove(ref);
  }

  async listLeftovers(held: readonly ArchiveRef[]): Promise<ArchiveRef[]> {
    return (await this.store()).listLeftovers(held);
  }

  async discardLeftover(pending: ArchiveRef): Promise<Removal> {
    return (await this.store()).discardLeftover(pending);
  }

  async read(key: string): Promise<Readable> {
    return (await this.store()).read(key);
  }
}
