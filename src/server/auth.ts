// Bearer-token authentication: the server accepts a call only when its
// `authorization: Bearer <token>` header carries one of the tokens of the
// --auth-token-file. Tokens are compared as SHA-256 digests with
// crypto.timingSafeEqual, so the comparison takes the same time whatever the
// presented token shares with a real one. Health stays open so that probes
// and load balancers need no secret. Reflection without any token answers
// for the public files only (health, reflection, google.rpc; see
// reflection.ts), so that `grpcurl ... Health/Check` works while the backup
// API stays hidden; a wrong or malformed token is refused there too. A token
// never reaches a log line or an error message.
import { createHash, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { AUTHORIZATION_KEY } from "../wire/metadata-keys.js";
import { PUBLIC_SCOPE, REFLECTION_SCOPE_KEY } from "./reflection-scope.js";
import { richStatus, statusDetailsMetadata } from "./rpc-errors.js";

const BEARER_SCHEME = "bearer";

/** Services any caller may use without a token. */
export const UNAUTHENTICATED_SERVICES: readonly string[] = ["grpc.health.v1.Health"];

/**
 * Methods a caller without a token may use with a narrowed view
 * (reflection-scope.ts). Exact paths, not services: an unknown method of a
 * reflection service must answer UNAUTHENTICATED like any other.
 */
const ANONYMOUS_SCOPED_METHODS: ReadonlySet<string> = new Set([
  "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
]);

/** What a client must do, in every UNAUTHENTICATED status. */
const HOW_TO_AUTHENTICATE =
  'send the header "authorization: Bearer <token>" with a token from the server\'s --auth-token-file ' +
  "(vmabackup client commands: --token-file FILE or the VMABACKUP_TOKEN environment variable)";

/** Characters allowed in a token: visible ASCII, which every client can send in a header. */
const TOKEN_PATTERN = /^[\x21-\x7e]+$/;

/** A token file that cannot be used, with a message that never contains a token. */
export class TokenFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TokenFileError";
  }
}

function digest(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

/** The accepted tokens, kept only as digests. */
export class BearerTokens {
  private readonly digests: readonly Buffer[];

  private constructor(digests: readonly Buffer[]) {
    this.digests = digests;
  }

  /**
   * Reads tokens from `text`, one per line; blank lines and lines starting
   * with "#" are skipped, surrounding whitespace is ignored. `source` names
   * the file in errors. Throws TokenFileError.
   */
  static parse(text: string, source: string): BearerTokens {
    const digests: Buffer[] = [];
    text.split(/\r?\n/).forEach((raw, index) => {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) return;
      if (!TOKEN_PATTERN.test(line)) {
        throw new TokenFileError(`${source}: line ${index + 1}: a token must be printable ASCII without spaces`);
      }
      digests.push(digest(line));
    });
    if (digests.length === 0) throw new TokenFileError(`${source}: holds no token (one token per line)`);
    return new BearerTokens(digests);
  }

  /** Number of accepted tokens. */
  get size(): number {
    return this.digests.length;
  }

  /** True when `token` is one of the accepted tokens; looks at every one of them. */
  accepts(token: string): boolean {
    const presented = digest(token);
    let accepted = false;
    for (const known of this.digests) {
      // No early exit: the time taken says nothing about which token matched.
      accepted = timingSafeEqual(known, presented) || accepted;
    }
    return accepted;
  }
}

/** Reads an --auth-token-file. Throws TokenFileError. */
export async function readTokenFile(file: string): Promise<BearerTokens> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new TokenFileError(`${file}: cannot be read (${code})`);
  }
  return BearerTokens.parse(text, file);
}

/** Why a call was refused, for the log, the status message and metrics. */
export type Refusal = "missing" | "malformed" | "invalid";

/** The token of a call's metadata, or why there is none usable. */
function presentedToken(metadata: grpc.Metadata): { token: string } | { refusal: Refusal } {
  const values = metadata.get(AUTHORIZATION_KEY);
  if (values.length === 0) return { refusal: "missing" };
  const value = values.length === 1 ? values[0] : undefined;
  if (typeof value !== "string") return { refusal: "malformed" };
  const space = value.indexOf(" ");
  if (space < 0 || value.slice(0, space).toLowerCase() !== BEARER_SCHEME) return { refusal: "malformed" };
  const token = value.slice(space + 1).trim();
  return token === "" ? { refusal: "malformed" } : { token };
}

/** ErrorInfo reasons of UNAUTHENTICATED, stable like the engine's. */
const REFUSAL_REASONS: Readonly<Record<Refusal, string>> = {
  missing: "TOKEN_MISSING",
  malformed: "TOKEN_MALFORMED",
  invalid: "TOKEN_INVALID",
};

const REFUSAL_MESSAGES: Readonly<Record<Refusal, string>> = {
  missing: "missing bearer token",
  malformed: 'malformed authorization header (expected "Bearer <token>")',
  invalid: "invalid bearer token",
};

/** "vmabackup.v1.BackupService" for "/vmabackup.v1.BackupService/Backup". */
function serviceOf(path: string): string {
  return path.split("/")[1] ?? "";
}

export interface AuthInterceptorOptions {
  readonly tokens: BearerTokens;
  /** Refusals are logged here (rpc, peer and why; never the token). */
  readonly logger: Logger;
  /** Services callable without a token (default UNAUTHENTICATED_SERVICES). */
  readonly openServices?: readonly string[];
  /** Told of every refusal (metrics: src/metrics/daemon-metrics.ts). */
  readonly onRefusal?: (refusal: Refusal) => void;
}

/**
 * A grpc-js server interceptor that ends every call without a valid bearer
 * token with UNAUTHENTICATED before its handler runs.
 */
export function createAuthInterceptor(options: AuthInterceptorOptions): grpc.ServerInterceptor {
  const openServices = new Set(options.openServices ?? UNAUTHENTICATED_SERVICES);
  return (method, call) => {
    if (openServices.has(serviceOf(method.path))) return new grpc.ServerInterceptingCall(call);
    return new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, nextMetadata) {
            const presented = presentedToken(metadata);
            const refusal =
              "refusal" in presented
                ? presented.refusal
                : options.tokens.accepts(presented.token)
                  ? undefined
                  : "invalid";
            // Only this interceptor decides the scope: drop what a client sent.
            metadata.remove(REFLECTION_SCOPE_KEY);
            if (refusal === "missing" && ANONYMOUS_SCOPED_METHODS.has(method.path)) {
              metadata.set(REFLECTION_SCOPE_KEY, PUBLIC_SCOPE);
              nextMetadata(metadata);
              return;
            }
            if (refusal === undefined) {
              nextMetadata(metadata);
              return;
            }
            options.logger.warn({ rpc: method.path, peer: call.getPeer(), refusal }, "rpc unauthenticated");
            options.onRefusal?.(refusal);
            const details = `${REFUSAL_MESSAGES[refusal]}: ${HOW_TO_AUTHENTICATE}`;
            const code = grpc.status.UNAUTHENTICATED;
            call.sendStatus({
              code,
              details,
              // An ErrorInfo like every other refusal, for clients that act on reasons.
              metadata: statusDetailsMetadata(richStatus(code, details, { reason: REFUSAL_REASONS[refusal] })),
            });
          },
        });
      },
    });
  };
}
