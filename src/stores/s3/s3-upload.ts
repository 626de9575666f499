// One archive streamed into S3 as a multipart upload. The upload is created
// before the first byte (its UploadId goes into the job record, so a later
// process can abort it by id: not every server lists multipart uploads),
// parts are cut from the byte stream, each sent with a CRC32 checksum the
// server checks, a few at a time, and the object appears only when
// CompleteMultipartUpload succeeds (with If-None-Match: * where the server
// honours it, so an object of the same name is never replaced).
//
// Memory: the part being filled plus the parts in flight, which are held
// to at most `inFlightBytes` (at least one part always goes): at most
// inFlightBytes + partSize, or 2 × partSize when parts are bigger.
// Back-pressure: write() waits while the parts in flight fill that budget.
import {
  AbortMultipartUploadCommand,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  type S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { ArchiveExistsError, type ArchiveRef, type ArchiveUpload } from "../archive-store.js";
import { formatS3Url } from "./s3-url.js";

/** S3's limits: 10,000 parts, each but the last at least 5 MiB and at most 5 GiB. */
const MAX_PARTS = 10_000;
const MAX_PART_SIZE = 5 * 2 ** 30;
/** Parts per size step: the part size doubles every this many parts, so huge archives still fit. */
const PARTS_PER_SIZE_STEP = 1000;

export interface S3UploadTarget {
  readonly client: S3Client;
  readonly bucket: string;
  readonly key: string;
  readonly uploadId: string;
  /** Stored as object metadata: tells our object from another one of the same name. */
  readonly token: string;
  /** Size of the first 1000 parts; doubles every 1000 parts. */
  readonly partSize: number;
  /** Bytes of parts in flight at most (one part always may go). */
  readonly inFlightBytes: number;
}

type State = "open" | "committing" | "committed" | "aborted";

export class S3Upload implements ArchiveUpload {
  readonly pending: ArchiveRef;
  readonly location: string;
  private readonly target: S3UploadTarget;
  private readonly cancel = new AbortController();
  private state: State = "open";
  private part: Buffer | undefined;
  private partFill = 0;
  private nextPartNumber = 1;
  private readonly completed: CompletedPart[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private inFlightBytes = 0;
  private written = 0;
  /** The first failed part (after the client's retries); every later call rethrows it. */
  private failure: unknown = undefined;
  /** Serialises overlapping write() calls so they append in call order. */
  private writes: Promise<void> = Promise.resolve();

  constructor(target: S3UploadTarget) {
    this.target = target;
    this.location = formatS3Url(target.bucket, target.key);
    this.pending = {
      store: "s3",
      bucket: target.bucket,
      key: target.key,
      uploadId: target.uploadId,
      token: target.token,
    };
  }

  get bytesWritten(): number {
    return this.written;
  }

  /** Copies the chunks into the current part: they are released when this resolves. */
  write(chunks: readonly Uint8Array[]): Promise<void> {
    const appended = this.writes.then(() => this.append(chunks));
    this.writes = appended.catch(() => undefined);
    return appended;
  }

  async commit(): Promise<ArchiveRef> {
    if (this.state !== "open") throw new Error(`cannot commit ${this.location}: the upload was already ${this.state}`);
    this.state = "committing";
    await this.writes;
    this.throwIfFailed();
    // An empty archive still needs one (empty) part.
    if (this.partFill > 0 || this.nextPartNumber === 1) await this.sendPart();
    await Promise.all(this.inFlight);
    this.throwIfFailed();
    const { client, bucket, key, uploadId, token } = this.target;
    let output: { ETag?: string | undefined; VersionId?: string | undefined };
    try {
      output = await client.send(
        new CompleteMultipartUploadCommand({
          Bucket: bucket,
          Key: key,
          UploadId: uploadId,
          MultipartUpload: { Parts: this.completed },
          IfNoneMatch: "*",
        }),
        { abortSignal: this.cancel.signal },
      );
    } catch (error) {
      if (httpStatusOf(error) === 412) throw new ArchiveExistsError(this.location);
      throw error;
    }
    this.state = "committed";
    const committed: Record<string, string> = {
      store: "s3",
      bucket,
      key,
      etag: output.ETag ?? "",
      size: String(this.written),
      token,
    };
    if (output.VersionId !== undefined) committed.versionId = output.VersionId;
    return committed;
  }

  async abort(): Promise<void> {
    if (this.state === "committed" || this.state === "aborted") return;
    this.state = "aborted";
    this.failure ??= new Error(`the upload to ${this.location} was aborted`);
    this.cancel.abort();
    await this.writes;
    await Promise.allSettled(this.inFlight);
    this.part = undefined;
    const { client, bucket, key, uploadId } = this.target;
    try {
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }));
    } catch (error) {
      if (errorName(error) !== "NoSuchUpload") throw error;
    }
  }

  private async append(chunks: readonly Uint8Array[]): Promise<void> {
    this.throwIfFailed();
    // Writes queued before commit() still land; none after the end.
    if (this.state === "aborted" || this.state === "committed") {
      throw new Error(`cannot write to ${this.location}: the upload was ${this.state}`);
    }
    for (const chunk of chunks) {
      let offset = 0;
      while (offset < chunk.byteLength) {
        const size = this.partSizeOf(this.nextPartNumber);
        this.part ??= Buffer.allocUnsafe(size);
        const take = Math.min(size - this.partFill, chunk.byteLength - offset);
        this.part.set(chunk.subarray(offset, offset + take), this.partFill);
        this.partFill += take;
        offset += take;
        this.written += take;
        if (this.partFill === size) await this.sendPart();
      }
    }
  }

  /** Sends the current part once the parts in flight leave room for it. */
  private async sendPart(): Promise<void> {
    const body = (this.part ?? Buffer.alloc(0)).subarray(0, this.partFill);
    this.part = undefined;
    this.partFill = 0;
    while (this.inFlight.size > 0 && this.inFlightBytes + body.byteLength > this.target.inFlightBytes) {
      await Promise.race(this.inFlight);
    }
    this.throwIfFailed();
    const partNumber = this.nextPartNumber;
    if (partNumber > MAX_PARTS) throw new RangeError(`${this.location} would need more than ${MAX_PARTS} parts`);
    this.nextPartNumber += 1;
    const { client, bucket, key, uploadId } = this.target;
    const sent = client
      .send(
        new UploadPartCommand({
          Bucket: bucket,
          Key: key,
          UploadId: uploadId,
          PartNumber: partNumber,
          Body: body,
          ContentLength: body.byteLength,
          ChecksumAlgorithm: "CRC32",
        }),
        { abortSignal: this.cancel.signal },
      )
      .then(
        (output) => {
          this.completed[partNumber - 1] = {
            PartNumber: partNumber,
            ETag: output.ETag,
            ...(output.ChecksumCRC32 === undefined ? {} : { ChecksumCRC32: output.ChecksumCRC32 }),
          };
        },
        (error: unknown) => {
          this.failure ??= error;
        },
      )
      .finally(() => {
        this.inFlight.delete(sent);
        this.inFlightBytes -= body.byteLength;
      });
    this.inFlight.add(sent);
    this.inFlightBytes += body.byteLength;
  }

  private partSizeOf(partNumber: number): number {
    const step = Math.floor((partNumber - 1) / PARTS_PER_SIZE_STEP);
    return Math.min(this.target.partSize * 2 ** step, MAX_PART_SIZE);
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}

export function httpStatusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

export function errorName(error: unknown): string | undefined {
  const name = (error as { name?: unknown; Code?: unknown } | null)?.name;
  return typeof name === "string" ? name : undefined;
}
