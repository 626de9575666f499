// An S3 client as the operator configured it: endpoint (Ceph RGW, MinIO, or
// AWS when unset), region, path-style addressing, and credentials from a
// file or the standard AWS chain (environment, profile, SSO, instance
// metadata), never from the command line.
import { S3Client } from "@aws-sdk/client-s3";
import { fromIni } from "@aws-sdk/credential-provider-ini";
import { defaultProvider } from "@aws-sdk/credential-provider-node";

export interface S3ClientOptions {
  /** e.g. http://127.0.0.1:9000; unset for AWS itself. */
  readonly endpoint?: string;
  /** Default AWS_REGION, else "us-east-1" (what S3-compatible servers expect when they ignore regions). */
  readonly region?: string;
  /** Buckets in the path (http://host/bucket/key), as Ceph RGW and MinIO usually need. */
  readonly forcePathStyle?: boolean;
  /**
   * An AWS shared-credentials file ([profile] aws_access_key_id=...); when
   * set, only it is used. Otherwise the standard chain.
   */
  readonly credentialsFile?: string;
  /** The profile to read (default: AWS_PROFILE, else "default"). */
  readonly profile?: string;
  /** Attempts per request, the first included (default 5): failed parts are sent again. */
  readonly maxAttempts?: number;
}

const DEFAULT_REGION = "us-east-1";
const DEFAULT_ATTEMPTS = 5;

export function createS3Client(options: S3ClientOptions): S3Client {
  const profile = options.profile === undefined ? {} : { profile: options.profile };
  const credentials =
    options.credentialsFile === undefined
      ? defaultProvider(profile)
      : fromIni({ filepath: options.credentialsFile, ...profile });
  return new S3Client({
    ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
    region: options.region ?? process.env.AWS_REGION ?? DEFAULT_REGION,
    forcePathStyle: options.forcePathStyle ?? false,
    credentials,
    maxAttempts: options.maxAttempts ?? DEFAULT_ATTEMPTS,
    // A checksum on every request body (each part), checked by the server.
    requestChecksumCalculation: "WHEN_SUPPORTED",
  });
}
