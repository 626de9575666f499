// The S3 store: archives are objects under `s3://bucket/prefix`, written as
// multipart uploads (s3-upload.ts). References name the object exactly: the
// pending one by its UploadId and a random token stored as object metadata,
// the committed one by its ETag (and VersionId on versioned buckets), so
// removal never takes an object someone wrote over ours.
import { randomUUID } from "node:crypto";
import { Readable } from "node:stream";
import {
  AbortMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  type HeadObjectCommandOutput,
  ListPartsCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import {
  ArchiveExistsError,
  type ArchiveInfo,
  ArchiveKeptError,
  ArchiveMissingError,
  type ArchiveRef,
  type ArchiveStore,
  type ArchiveUpload,
  checkKey,
  type Removal,
  refField,
} from "../archive-store.js";
import { errorName, httpStatusOf, S3Upload } from "./s3-upload.js";
import { formatS3Url, normalizeS3Prefix } from "./s3-url.js";

const KIND = "s3";
/** Object metadata (x-amz-meta-vmabackup-token) holding the upload's token. */
const TOKEN_METADATA = "vmabackup-token";
const DEFAULT_PART_SIZE = 16 * 2 ** 20;
const DEFAULT_IN_FLIGHT_BYTES = 64 * 2 ** 20;

export interface S3StoreOptions {
  readonly name: string;
  readonly client: S3Client;
  readonly bucket: string;
  /** Key prefix, e.g. "pve/dump" ("" for the bucket's root); a "/" is put between it and each key. */
  readonly prefix?: string;
  /** First part size (default 16 MiB; at least 5 MiB on real S3); doubles every 1000 parts. */
  readonly partSize?: number;
  /** Bytes of parts in flight at most (default 64 MiB). */
  readonly inFlightBytes?: number;
}

export function createS3Store(options: S3StoreOptions): ArchiveStore {
  return new S3Store(options);
}

class S3Store implements ArchiveStore {
  readonly name: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly partSize: number;
  private readonly inFlightBytes: number;

  constructor(options: S3StoreOptions) {
    this.name = options.name;
    this.client = options.client;
    this.bucket = options.bucket;
    this.prefix = normalizeS3Prefix(options.prefix);
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.inFlightBytes = options.inFlightBytes ?? DEFAULT_IN_FLIGHT_BYTES;
  }

  location(key: string): string {
    return formatS3Url(this.bucket, this.prefix + key);
  }

  async create(key: string): Promise<ArchiveUpload> {
    checkKey(key);
    const objectKey = this.prefix + key;
    // Where the server honours it, If-None-Match on completion is the real guard; this check fails early.
    if ((await this.head(objectKey)) !== undefined) throw new ArchiveExistsError(this.location(key));
    const token = randomUUID();
    const created = await this.client.send(
      new CreateMultipartUploadCommand({
        Bucket: this.bucket,
        Key: objectKey,
        ChecksumAlgorithm: "CRC32",
        Metadata: { [TOKEN_METADATA]: token },
      }),
    );
    if (created.UploadId === undefined) throw new Error(`${this.location(key)}: the server returned no UploadId`);
    return new S3Upload({
      client: this.client,
      bucket: this.bucket,
      key: objectKey,
      uploadId: created.UploadId,
      token,
      partSize: this.partSize,
      inFlightBytes: this.inFlightBytes,
    });
  }

  async findCommitted(pending: ArchiveRef): Promise<ArchiveRef | undefined> {
    const key = this.refKey(pending);
    const head = await this.head(key);
    if (head === undefined || head.Metadata?.[TOKEN_METADATA] !== refField(pending, "token")) return undefined;
    const committed: Record<string, string> = {
      store: KIND,
      bucket: this.bucket,
      key,
      etag: head.ETag ?? "",
      size: String(head.ContentLength ?? 0),
      token: refField(pending, "token"),
    };
    if (head.VersionId !== undefined) committed.versionId = head.VersionId;
    return committed;
  }

  async stat(ref: ArchiveRef): Promise<ArchiveInfo | undefined> {
    const key = this.refKey(ref);
    const head = await this.committedObject(ref, key);
    if (head === undefined) return undefined;
    return {
      size: head.ContentLength ?? 0,
      modifiedAt: head.LastModified?.getTime() ?? 0,
      location: formatS3Url(this.bucket, key),
    };
  }

  async remove(ref: ArchiveRef): Promise<Removal> {
    const key = this.refKey(ref);
    const head = await this.committedObject(ref, key);
    if (head === undefined) return "absent";
    // On a versioned bucket only our version goes; elsewhere the object, if its ETag still matches.
    await this.client.send(
      new DeleteObjectCommand({
        Bucket: this.bucket,
        Key: key,
        ...(ref.versionId === undefined ? { IfMatch: refField(ref, "etag") } : { VersionId: ref.versionId }),
      }),
    );
    return "removed";
  }

  async listLeftovers(held: readonly ArchiveRef[]): Promise<ArchiveRef[]> {
    const found: ArchiveRef[] = [];
    for (const pending of held) {
      // Committed references (no UploadId) have no leftovers.
      if (pending.store !== KIND || pending.bucket !== this.bucket || pending.uploadId === undefined) continue;
      try {
        await this.client.send(
          new ListPartsCommand({
            Bucket: this.bucket,
            Key: refField(pending, "key"),
            UploadId: refField(pending, "uploadId"),
            MaxParts: 1,
          }),
        );
        found.push(pending);
      } catch (error) {
        if (errorName(error) !== "NoSuchUpload") throw error;
      }
    }
    return found;
  }

  async discardLeftover(pending: ArchiveRef): Promise<Removal> {
    const key = this.refKey(pending);
    try {
      await this.client.send(
        new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: refField(pending, "uploadId") }),
      );
      return "removed";
    } catch (error) {
      if (errorName(error) === "NoSuchUpload") return "absent";
      throw error;
    }
  }

  async read(key: string): Promise<Readable> {
    checkKey(key);
    return (await readObject(this.client, this.bucket, this.prefix + key)).body;
  }

  private refKey(ref: ArchiveRef): string {
    if (ref.store !== KIND) throw new ArchiveKeptError("bad-reference", `not an S3 archive reference: ${ref.store}`);
    const bucket = refField(ref, "bucket");
    if (bucket !== this.bucket) {
      throw new ArchiveKeptError("outside-store", `${formatS3Url(bucket, ref.key ?? "")} is not in ${this.bucket}`);
    }
    return refField(ref, "key");
  }

  /** The head of the committed object `ref` names; ArchiveKeptError when another object took its name. */
  private async committedObject(ref: ArchiveRef, key: string): Promise<HeadObjectCommandOutput | undefined> {
    const head = await this.head(key, ref.versionId);
    if (head === undefined) return undefined;
    if (head.ETag !== refField(ref, "etag") || String(head.ContentLength) !== refField(ref, "size")) {
      throw new ArchiveKeptError(
        "not-the-archive",
        `${formatS3Url(this.bucket, key)} has been replaced since the job wrote it`,
      );
    }
    return head;
  }

  private async head(key: string, versionId?: string): Promise<HeadObjectCommandOutput | undefined> {
    try {
      return await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key, VersionId: versionId }));
    } catch (error) {
      if (httpStatusOf(error) === 404) return undefined;
      throw error;
    }
  }
}

/** The object's bytes, streamed, and its size; ArchiveMissingError when there is none. */
export async function readObject(
  client: S3Client,
  bucket: string,
  key: string,
): Promise<{ body: Readable; size: number | undefined }> {
  try {
    const output = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const body = output.Body;
    if (!(body instanceof Readable)) throw new Error(`${formatS3Url(bucket, key)}: the response has no body stream`);
    return { body, size: output.ContentLength };
  } catch (error) {
    if (httpStatusOf(error) === 404 || errorName(error) === "NoSuchKey") {
      throw new ArchiveMissingError(formatS3Url(bucket, key));
    }
    throw error;
  }
}
