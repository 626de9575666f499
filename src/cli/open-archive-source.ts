// The ARCHIVE argument of `vmabackup vma ...`: a file, "-" for stdin, or an
// s3://bucket/key URL streamed from S3 (endpoint, region, path style and
// credentials file from the --s3-* options or the standard AWS environment,
// never credentials on the command line).
//
// The S3 client (the AWS SDK) is loaded only for an s3:// archive: loading it
// took longer than a whole `vma list` of a local file.
import type { S3ClientOptions } from "../stores/s3/s3-client.js";
import { isS3Url, parseS3Url } from "../stores/s3/s3-url.js";
import { openArchive, openArchiveStream, type OpenedArchive } from "../vma/open-archive.js";

/** The --s3-* options as commander gives them. */
export interface S3CommandOptions {
  readonly s3Endpoint?: string;
  readonly s3Region?: string;
  readonly s3Credentials?: string;
  readonly s3Profile?: string;
  readonly s3PathStyle?: boolean;
}

/** Turns the --s3-* options (and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) into client options. */
export function s3ClientOptions(options: S3CommandOptions, env: NodeJS.ProcessEnv = process.env): S3ClientOptions {
  const endpoint = options.s3Endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  return {
    ...(endpoint === undefined ? {} : { endpoint }),
    ...(options.s3Region === undefined ? {} : { region: options.s3Region }),
    ...(options.s3Credentials === undefined ? {} : { credentialsFile: options.s3Credentials }),
    ...(options.s3Profile === undefined ? {} : { profile: options.s3Profile }),
    // A custom endpoint is almost always Ceph RGW or MinIO, which want the bucket in the path.
    forcePathStyle: options.s3PathStyle ?? endpoint !== undefined,
  };
}

export async function openArchiveSource(source: string, options: S3CommandOptions): Promise<OpenedArchive> {
  if (!isS3Url(source)) return openArchive(source);
  const { bucket, key } = parseS3Url(source);
  const [{ createS3Client }, { readObject }] = await Promise.all([
    import("../stores/s3/s3-client.js"),
    import("../stores/s3/s3-store.js"),
  ]);
  const client = createS3Client(s3ClientOptions(options));
  const object = await readObject(client, bucket, key);
  // The client's sockets must not keep the process alive once the stream ended.
  object.body.once("close", () => client.destroy());
  return openArchiveStream(object.body, object.size);
}
