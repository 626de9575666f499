// `s3://bucket/prefix` as typed by people, and back.

export interface S3Url {
  readonly bucket: string;
  /** The key, or the prefix of keys; "" for the whole bucket. No leading "/". */
  readonly key: string;
}

export const S3_SCHEME = "s3://";

/** S3's rule: 3-63 characters of lower-case letters, digits, dots and hyphens. */
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export class S3UrlError extends Error {
  constructor(text: string, why: string) {
    super(`${JSON.stringify(text)} is not an s3:// URL: ${why} (expected s3://BUCKET/KEY)`);
    this.name = "S3UrlError";
  }
}

export function isS3Url(text: string): boolean {
  return text.startsWith(S3_SCHEME);
}

/** Parses `s3://bucket[/key]`; throws S3UrlError saying what to fix. */
export function parseS3Url(text: string): S3Url {
  if (!isS3Url(text)) throw new S3UrlError(text, `it does not start with ${S3_SCHEME}`);
  const rest = text.slice(S3_SCHEME.length);
  const slash = rest.indexOf("/");
  const bucket = slash === -1 ? rest : rest.slice(0, slash);
  const key = slash === -1 ? "" : rest.slice(slash + 1);
  if (!BUCKET_NAME.test(bucket)) {
    throw new S3UrlError(text, "the bucket name must be 3-63 lower-case letters, digits, dots or hyphens");
  }
  return { bucket, key };
}

export function formatS3Url(bucket: string, key: string): string {
  return `${S3_SCHEME}${bucket}/${key}`;
}

/** A target's key prefix as stored: no leading or trailing slash, "" or ending in "/". */
export function normalizeS3Prefix(prefix: string | undefined): string {
  const trimmed = (prefix ?? "").replace(/^\/+|\/+$/g, "");
  return trimmed === "" ? "" : `${trimmed}/`;
}
