// Who may call: bearer tokens on every RPC but health (and never in a log
// line), TLS and mutual TLS with certificates made by openssl at test time,
// the CLI's client flags, and the listen policy of `vmabackup serve` (an
// address other than loopback needs TLS and a token, or --insecure).
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupService, BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { bearerTokenInterceptor } from "../src/client/bearer-token.js";
import { BearerTokens, createAuthInterceptor, readTokenFile, TokenFileError } from "../src/server/auth.js";
import { createClient } from "../src/client/grpc-client.js";
import { isLoopbackAddress, listenHost, listenPolicyViolation } from "../src/server/listen-policy.js";
import { readErrorDetails } from "../src/client/rpc-error-details.js";
import { loadServerCredentials, TlsConfigError } from "../src/server/tls.js";
import { makeTestCertificates, writeTokenFile } from "./helpers/certs.js";
import type { TestCertificates } from "./helpers/certs.js";
import { captureLog } from "./helpers/log-capture.js";
import type { LogLine } from "./helpers/log-capture.js";
import { rpcErrorOf, startSafetyServer, statusCodeOf, waitForEnd } from "./helpers/safety-server.js";
import type { BackupClient, SafetyServer } from "./helpers/safety-server.js";

const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

// Tokens the tests use; the log must never contain any of them.
const TOKEN_A = "vmab-test-token-A-7f3e9c2d41b84a56";
const TOKEN_B = "vmab-test-token-B-0a1b2c3d4e5f6789";
const WRONG_TOKEN = "vmab-test-token-A-7f3e9c2d41b84a57";
const SHORT_WRONG_TOKEN = "x";

let workDir: string;
let certs: TestCertificates;

beforeAll(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-auth-"));
  certs = await makeTestCertificates(workDir);
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

/** One call of every BackupService method, with `metadata`; resolves to its outcome. */
async function callEveryMethod(client: BackupClient): Promise<Map<string, grpc.status | "ok">> {
  const outcomes = new Map<string, grpc.status | "ok">();
  const outcome = async (call: Promise<unknown>): Promise<grpc.status | "ok"> => {
    const error = await rpcErrorOf(call);
    return error === undefined ? "ok" : error.code;
  };
  const deadline = (): Date => new Date(Date.now() + 5000);
  for (const method of BackupService.methods) {
    if (method.methodKind === "unary") {
      const invoke = (client as unknown as Record<string, (request: object, options: object) => Promise<unknown>>)[
        method.localName
      ]!;
      outcomes.set(method.name, await outcome(invoke({}, { deadline: deadline() })));
    } else {
      const invoke = (
        client as unknown as Record<string, (request: object, options: object) => AsyncIterable<unknown>>
      )[method.localName]!;
      const controller = new AbortController();
      outcomes.set(
        method.name,
        await outcome(
          (async () => {
            // A stream that is let through sends nothing while no job runs: stop after a moment.
            const timer = setTimeout(() => controller.abort(), 300);
            try {
              for await (const _message of invoke({}, { deadline: deadline(), signal: controller.signal })) break;
            } catch (error) {
              if (controller.signal.aborted && (error as grpc.ServiceError).code === grpc.status.CANCELLED) return;
              throw error;
            } finally {
              clearTimeout(timer);
            }
          })(),
        ),
      );
    }
  }
  return outcomes;
}

/** The status of a call to `method` (any path) with an empty request, unary or server streaming. */
function rawCallCode(client: grpc.Client, method: string, kind: "unary" | "stream"): Promise<grpc.status> {
  const serialize = (value: Buffer): Buffer => value;
  const deserialize = (value: Buffer): Buffer => value;
  const deadline = new Date(Date.now() + 5000);
  return new Promise((resolve) => {
    if (kind === "unary") {
      client.makeUnaryRequest(method, serialize, deserialize, Buffer.alloc(0), { deadline }, (error) =>
        resolve(error === null ? grpc.status.OK : error.code),
      );
      return;
    }
    const stream = client.makeServerStreamRequest(method, serialize, deserialize, Buffer.alloc(0), { deadline });
    stream.on("data", () => undefined);
    stream.on("error", (error: grpc.ServiceError) => resolve(error.code));
    stream.on("status", (status: grpc.StatusObject) => resolve(status.code));
  });
}

function tokenChannel(token: string): grpc.ChannelOptions {
  return { interceptors: [bearerTokenInterceptor(token)] };
}

function rawHeaderChannel(value: string): grpc.ChannelOptions {
  const interceptor: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", value);
        next(metadata, listener);
      },
    });
  return { interceptors: [interceptor] };
}

type HealthClient = grpc.Client & {
  check(
    request: { service: string },
    callback: (error: grpc.ServiceError | null, response?: { status: string }) => void,
  ): void;
};

function healthCheck(address: string, credentials = grpc.credentials.createInsecure()): Promise<string> {
  const definition = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: new (address: string, credentials: grpc.ChannelCredentials) => HealthClient } } };
  };
  const client = new loaded.grpc.health.v1.Health(address, credentials);
  return new Promise((resolve, reject) => {
    client.check({ service: "" }, (error, response) => {
      client.close();
      if (error) reject(error);
      else resolve(response!.status);
    });
  });
}

type ReflectionClient = grpc.Client & {
  serverReflectionInfo(
    metadata?: grpc.Metadata,
  ): grpc.ClientDuplexStream<object, { list_services_response?: { service: { name: string }[] } }>;
};

/** The services reflection lists, or the error code it ends with. */
function reflectionServices(
  address: string,
  channelOptions: grpc.ChannelOptions = {},
): Promise<string[] | grpc.status> {
  const reflectionRoot = path.resolve(path.dirname(require.resolve("@grpc/reflection")), "../..");
  const definition = protoLoader.loadSync(
    path.join(reflectionRoot, "build/proto/grpc/reflection/v1/reflection.proto"),
    {
      keepCase: true,
    },
  );
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: {
      reflection: {
        v1: {
          ServerReflection: new (
            address: string,
            credentials: grpc.ChannelCredentials,
            options: grpc.ChannelOptions,
          ) => ReflectionClient;
        };
      };
    };
  };
  const client = new loaded.grpc.reflection.v1.ServerReflection(
    address,
    grpc.credentials.createInsecure(),
    channelOptions,
  );
  return new Promise((resolve) => {
    const stream = client.serverReflectionInfo();
    stream.on("data", (response) => {
      resolve((response.list_services_response?.service ?? []).map((service: { name: string }) => service.name).sort());
      stream.end();
    });
    stream.on("error", (error: grpc.ServiceError) => resolve(error.code));
    stream.on("end", () => client.close());
    stream.write({ list_services: "" });
  });
}

describe("bearer tokens", () => {
  let server: SafetyServer;
  let sourcePath: string;

  beforeAll(async () => {
    const log = captureLog();
    const tokens = await readTokenFile(
      await writeTokenFile(workDir, "tokens", ["# operators", TOKEN_A, "", `  ${TOKEN_B}  `]),
    );
    server = await startSafetyServer({
      log,
      interceptors: [createAuthInterceptor({ tokens, logger: log.logger.child({ component: "auth" }) })],
    });
    sourcePath = await server.writeSource("disk.raw", Buffer.alloc(256 * 1024, 7));
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("refuses every BackupService RPC without a token, with a wrong one and with a malformed header", async () => {
    const clients = {
      none: server.client,
      wrong: server.newClient(undefined, tokenChannel(WRONG_TOKEN)),
      short: server.newClient(undefined, tokenChannel(SHORT_WRONG_TOKEN)),
      basic: server.newClient(undefined, rawHeaderChannel(`Basic ${TOKEN_A}`)),
      bare: server.newClient(undefined, rawHeaderChannel(TOKEN_A)),
      empty: server.newClient(undefined, rawHeaderChannel("Bearer ")),
    };
    for (const [name, client] of Object.entries(clients)) {
      const outcomes = await callEveryMethod(client);
      expect(outcomes.size, name).toBe(BackupService.methods.length);
      for (const [method, code] of outcomes) {
        expect({ name, method, code }).toEqual({ name, method, code: grpc.status.UNAUTHENTICATED });
      }
    }
  });

  it(
    "answers UNAUTHENTICATED for methods that do not exist too, so that they cannot be told apart without a " + "token",
    async () => {
      const unknown = [
        "/vmabackup.v1.BackupService/DeleteEverything",
        "/vmabackup.v1.Admin/Shell",
        "/grpc.reflection.v1.ServerReflection/Nope",
        "/nope",
      ];
      const channel = new grpc.Client(server.address, grpc.credentials.createInsecure());
      const authorized = new grpc.Client(server.address, grpc.credentials.createInsecure(), tokenChannel(TOKEN_A));
      try {
        for (const method of unknown) {
          for (const kind of ["unary", "stream"] as const) {
            expect({ method, kind, code: await rawCallCode(channel, method, kind) }).toEqual({
              method,
              kind,
              code: grpc.status.UNAUTHENTICATED,
            });
            // With a valid token the truth: there is no such method.
            expect({ method, kind, code: await rawCallCode(authorized, method, kind) }).toEqual({
              method,
              kind,
              code: grpc.status.UNIMPLEMENTED,
            });
          }
        }
      } finally {
        channel.close();
        authorized.close();
      }
    },
  );

  it("says how to authenticate", async () => {
    const missing = await rpcErrorOf(server.client.queryBackup({}));
    expect(missing?.details).toMatch(/^missing bearer token: send the header "authorization: Bearer <token>"/);
    expect(missing?.details).toContain("--auth-token-file");
    expect(missing?.details).toContain("--token-file");
    expect(missing?.details).toContain("VMABACKUP_TOKEN");
    const wrong = await rpcErrorOf(server.newClient(undefined, tokenChannel(WRONG_TOKEN)).queryBackup({}));
    expect(wrong?.details).toMatch(/^invalid bearer token: /);
    const malformed = await rpcErrorOf(
      server.newClient(undefined, rawHeaderChannel(`Basic ${TOKEN_A}`)).queryBackup({}),
    );
    expect(malformed?.details).toMatch(/^malformed authorization header/);
  });

  it("says why in an ErrorInfo, as every other refusal does", async () => {
    const cases: Array<[BackupClient, string]> = [
      [server.client, "TOKEN_MISSING"],
      [server.newClient(undefined, tokenChannel(WRONG_TOKEN)), "TOKEN_INVALID"],
      [server.newClient(undefined, rawHeaderChannel(`Basic ${TOKEN_A}`)), "TOKEN_MALFORMED"],
    ];
    for (const [client, reason] of cases) {
      const error = await rpcErrorOf(client.queryBackup({}));
      const details = readErrorDetails(error);
      expect(details?.status).toMatchObject({ code: grpc.status.UNAUTHENTICATED, message: error?.details });
      expect(details?.errorInfo).toMatchObject({ reason, domain: "vmabackup" });
    }
  });

  it("refuses a job without a token before anything is opened or created", async () => {
    const code = await statusCodeOf(
      server.client.backup({ backupFile: "refused.vma", devices: [{ name: "drive-scsi0", path: sourcePath }] }),
    );
    expect(code).toBe(grpc.status.UNAUTHENTICATED);
    expect(server.log.lines.filter((line) => line.msg === "backup started")).toEqual([]);
  });

  it("lets every token of the file through, on every RPC", async () => {
    for (const token of [TOKEN_A, TOKEN_B]) {
      const client = server.newClient(undefined, tokenChannel(token));
      const outcomes = await callEveryMethod(client);
      for (const [method, code] of outcomes)
        expect({ method, code }).not.toEqual({ method, code: grpc.status.UNAUTHENTICATED });
    }
    const client = server.newClient(undefined, tokenChannel(TOKEN_B));
    const started = await client.backup({ backupFile: "ok.vma", devices: [{ name: "drive-scsi0", path: sourcePath }] });
    expect((await waitForEnd(client, started.status!.uuid)).state).toBe(BackupState.DONE);
  });

  it("keeps health open to callers without a token", async () => {
    expect(await healthCheck(server.address)).toBe("SERVING");
  });

  it("shows callers without a token health and reflection only, and refuses wrong tokens", async () => {
    expect(await reflectionServices(server.address)).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
    expect(await reflectionServices(server.address, rawHeaderChannel("Basic x"))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await reflectionServices(server.address, tokenChannel(WRONG_TOKEN))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await reflectionServices(server.address, tokenChannel(TOKEN_A))).toEqual(
      expect.arrayContaining(["grpc.health.v1.Health", "vmabackup.v1.BackupService"]),
    );
  });

  it("logs every refusal with the RPC and the reason, and never a token", () => {
    const refusals = server.log.lines.filter((line: LogLine) => line.msg === "rpc unauthenticated");
    expect(refusals.length).toBeGreaterThanOrEqual(6 * BackupService.methods.length);
    expect(new Set(refusals.map((line) => line.refusal))).toEqual(new Set(["missing", "invalid", "malformed"]));
    expect(refusals.every((line) => typeof line.rpc === "string" && typeof line.peer === "string")).toBe(true);
    const text = server.log.text();
    for (const secret of [TOKEN_A, TOKEN_B, WRONG_TOKEN, "vmab-test-token"]) expect(text).not.toContain(secret);
  });
});

describe("token files", () => {
  it("reads one token per line, skipping blank and comment lines and surrounding space", () => {
    const tokens = BearerTokens.parse(`# comment\r\n\r\n  ${TOKEN_A}\t\r\n${TOKEN_B}\n`, "tokens");
    expect(tokens.size).toBe(2);
    expect(tokens.accepts(TOKEN_A)).toBe(true);
    expect(tokens.accepts(TOKEN_B)).toBe(true);
    expect(tokens.accepts(WRONG_TOKEN)).toBe(false);
    expect(tokens.accepts(`${TOKEN_A} `)).toBe(false);
    expect(tokens.accepts("")).toBe(false);
  });

  it("refuses a file without tokens, or with a token no client can send, without echoing it", async () => {
    expect(() => BearerTokens.parse("# nothing\n\n", "empty-file")).toThrow(/empty-file: holds no token/);
    const secret = "tökén-with-umlauts";
    let error: unknown;
    try {
      BearerTokens.parse(`${TOKEN_A}\n${secret}\n`, "bad-file");
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(TokenFileError);
    expect((error as Error).message).toBe("bad-file: line 2: a token must be printable ASCII without spaces");
    await expect(readTokenFile(path.join(workDir, "missing"))).rejects.toThrow(/missing: cannot be read \(ENOENT\)/);
  });
});

describe("TLS", () => {
  let server: SafetyServer;

  beforeAll(async () => {
    server = await startSafetyServer({
      credentials: await loadServerCredentials({ certFile: certs.server.certFile, keyFile: certs.server.keyFile }),
      clientCredentials: grpc.credentials.createSsl(certs.serverCa.cert),
    });
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("serves a client that trusts the server's CA", async () => {
    expect(await server.client.queryBackup({})).toBeDefined();
    const named = createClient(
      BackupService,
      `localhost:${server.address.split(":")[1]}`,
      grpc.credentials.createSsl(certs.serverCa.cert),
    );
    try {
      expect(await named.queryBackup({})).toBeDefined();
    } finally {
      named.close();
    }
    expect(await healthCheck(server.address, grpc.credentials.createSsl(certs.serverCa.cert))).toBe("SERVING");
  });

  it("refuses a plaintext client and a client that trusts another CA", async () => {
    const deadline = (): Date => new Date(Date.now() + 3000);
    const plaintext = server.newClient(grpc.credentials.createInsecure());
    expect(await statusCodeOf(plaintext.queryBackup({}, { deadline: deadline() }))).toBe(grpc.status.UNAVAILABLE);
    const distrustful = server.newClient(grpc.credentials.createSsl(certs.rogueCa.cert));
    expect(await statusCodeOf(distrustful.queryBackup({}, { deadline: deadline() }))).toBe(grpc.status.UNAVAILABLE);
  });

  it("refuses TLS files that do not fit together, naming the flag", async () => {
    await expect(
      loadServerCredentials({ certFile: certs.server.certFile, keyFile: certs.client.keyFile }),
    ).rejects.toThrow(
      new TlsConfigError(`--tls-key ${certs.client.keyFile} does not belong to --tls-cert ${certs.server.certFile}`),
    );
    await expect(
      loadServerCredentials({ certFile: certs.server.keyFile, keyFile: certs.server.keyFile }),
    ).rejects.toThrow(/--tls-cert .*: not a PEM certificate/);
    await expect(
      loadServerCredentials({
        certFile: certs.server.certFile,
        keyFile: certs.server.keyFile,
        clientCaFile: path.join(workDir, "nope"),
      }),
    ).rejects.toThrow(/--tls-client-ca .*nope: cannot be read \(ENOENT\)/);
  });
});

describe("mutual TLS", () => {
  let server: SafetyServer;

  beforeAll(async () => {
    server = await startSafetyServer({
      credentials: await loadServerCredentials({
        certFile: certs.server.certFile,
        keyFile: certs.server.keyFile,
        clientCaFile: certs.clientCa.certFile,
      }),
      clientCredentials: grpc.credentials.createSsl(certs.serverCa.cert, certs.client.key, certs.client.cert),
    });
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("serves a client with a certificate the client CA signed", async () => {
    expect(await server.client.queryBackup({})).toBeDefined();
  });

  it("refuses a client without a certificate, or with one another CA signed", async () => {
    const deadline = (): Date => new Date(Date.now() + 3000);
    const anonymous = server.newClient(grpc.credentials.createSsl(certs.serverCa.cert));
    expect(await statusCodeOf(anonymous.queryBackup({}, { deadline: deadline() }))).toBe(grpc.status.UNAVAILABLE);
    const rogue = server.newClient(
      grpc.credentials.createSsl(certs.serverCa.cert, certs.rogueClient.key, certs.rogueClient.cert),
    );
    expect(await statusCodeOf(rogue.queryBackup({}, { deadline: deadline() }))).toBe(grpc.status.UNAVAILABLE);
  });
});

describe("the listen policy", () => {
  it("knows loopback addresses (names are judged by what they resolve to: safety-listen.test.ts)", () => {
    for (const host of ["127.0.0.1", "127.8.9.10", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"]) {
      expect({ host, loopback: isLoopbackAddress(host) }).toEqual({ host, loopback: true });
    }
    for (const host of ["0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "::ffff:10.0.0.1", "localhost", "example.com", ""]) {
      expect({ host, loopback: isLoopbackAddress(host) }).toEqual({ host, loopback: false });
    }
    expect(listenHost("[::1]:50051")).toBe("::1");
    expect(listenHost("0.0.0.0:50051")).toBe("0.0.0.0");
  });

  it("allows loopback always, other addresses with TLS and a token or --insecure", () => {
    const none = { tls: false, auth: false, insecure: false };
    expect(listenPolicyViolation("127.0.0.1:50051", ["127.0.0.1"], none)).toBeUndefined();
    expect(listenPolicyViolation("[::1]:0", ["::1"], none)).toBeUndefined();
    expect(
      listenPolicyViolation("0.0.0.0:50051", ["0.0.0.0"], { tls: true, auth: true, insecure: false }),
    ).toBeUndefined();
    expect(listenPolicyViolation("0.0.0.0:50051", ["0.0.0.0"], { ...none, insecure: true })).toBeUndefined();
    expect(listenPolicyViolation("0.0.0.0:50051", ["0.0.0.0"], none)).toMatch(
      /^refusing to listen on 0\.0\.0\.0:50051: .*\(missing: --tls-cert and --tls-key, --auth-token-file\).*--insecure/,
    );
    expect(listenPolicyViolation("[::]:1", ["::"], { ...none, tls: true })).toMatch(/\(missing: --auth-token-file\)/);
    expect(listenPolicyViolation("10.1.2.3:1", ["10.1.2.3"], { ...none, auth: true })).toMatch(
      /\(missing: --tls-cert and --tls-key\)/,
    );
  });
});

interface ChildResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the vmabackup CLI to its end. */
function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<ChildResult> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
    cwd: PROJECT_ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

describe("vmabackup serve, as a child process", () => {
  let dirs: string[];
  let tokenFile: string;

  beforeAll(async () => {
    tokenFile = await writeTokenFile(workDir, "serve-tokens", [TOKEN_A]);
    dirs = [
      "--backup-dir",
      path.join(workDir, "b"),
      "--source-root",
      path.join(workDir, "s"),
      "--state-dir",
      path.join(workDir, "st"),
    ];
  });

  it("refuses an address other than loopback without TLS and a token, naming the flags (exit 2)", async () => {
    const plain = await runCli(["serve", "--listen", "0.0.0.0:0", ...dirs]);
    expect(plain.code).toBe(2);
    expect(plain.stderr).toContain("refusing to listen on 0.0.0.0:0");
    for (const flag of ["--tls-cert", "--tls-key", "--auth-token-file", "--insecure"])
      expect(plain.stderr).toContain(flag);
    expect(plain.stdout).not.toContain('"listening"');

    const tlsOnly = await runCli([
      "serve",
      "--listen",
      "[::]:0",
      ...dirs,
      "--tls-cert",
      certs.server.certFile,
      "--tls-key",
      certs.server.keyFile,
    ]);
    expect(tlsOnly.code).toBe(2);
    expect(tlsOnly.stderr).toContain("(missing: --auth-token-file)");
  });

  it("refuses flags that do not fit together, and unusable files (exit 2)", async () => {
    const half = await runCli(["serve", "--listen", "127.0.0.1:0", ...dirs, "--tls-cert", certs.server.certFile]);
    expect(half.code).toBe(2);
    expect(half.stderr).toContain("--tls-cert and --tls-key go together");
    const caOnly = await runCli([
      "serve",
      "--listen",
      "127.0.0.1:0",
      ...dirs,
      "--tls-client-ca",
      certs.clientCa.certFile,
    ]);
    expect(caOnly.code).toBe(2);
    expect(caOnly.stderr).toContain("--tls-client-ca needs --tls-cert and --tls-key");
    const emptyTokens = path.join(workDir, "empty-tokens");
    await writeFile(emptyTokens, "\n# none\n");
    const noTokens = await runCli(["serve", "--listen", "127.0.0.1:0", ...dirs, "--auth-token-file", emptyTokens]);
    expect(noTokens.code).toBe(2);
    expect(noTokens.stderr).toContain("holds no token");
  });

  it(
    "lets --insecure, or TLS with a token, past the policy (then fails to bind an address no interface " + "has)",
    async () => {
      // 192.0.2.1 (TEST-NET-1) belongs to no interface: the policy is passed,
      // the bind fails, and nothing ever listens beyond loopback.
      const insecure = await runCli(["serve", "--listen", "192.0.2.1:0", ...dirs, "--insecure"]);
      expect(insecure.code).toBe(1);
      expect(insecure.stderr).not.toContain("refusing");
      expect(insecure.stdout).toContain(
        "--insecure: serving an address other than loopback without TLS and a bearer token",
      );
      expect(insecure.stdout).toContain("cannot start the server");
      const secured = await runCli([
        "serve",
        "--listen",
        "192.0.2.1:0",
        ...dirs,
        "--tls-cert",
        certs.server.certFile,
        "--tls-key",
        certs.server.keyFile,
        "--auth-token-file",
        tokenFile,
      ]);
      expect(secured.code).toBe(1);
      expect(secured.stdout).toContain('"tls":true');
      expect(secured.stdout).toContain("cannot start the server");
      expect(secured.stdout).not.toContain("--insecure");
    },
  );

  it("serves mutual TLS with a token end to end, and the CLI's client flags reach it", async () => {
    const serve = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "src/cli/main.ts",
        "serve",
        "--listen",
        "127.0.0.1:0",
        ...dirs,
        "--tls-cert",
        certs.server.certFile,
        "--tls-key",
        certs.server.keyFile,
        "--tls-client-ca",
        certs.clientCa.certFile,
        "--auth-token-file",
        tokenFile,
      ],
      { cwd: PROJECT_ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    const stdout: string[] = [];
    try {
      const address = await new Promise<string>((resolve, reject) => {
        createInterface({ input: serve.stdout }).on("line", (text) => {
          stdout.push(text);
          const line = JSON.parse(text) as LogLine;
          if (line.msg === "listening") resolve(line.address as string);
        });
        serve.on("exit", (code) => reject(new Error(`serve exited (${code})`)));
      });
      const port = address.split(":")[1]!;
      const tls = [
        "--tls-ca",
        certs.serverCa.certFile,
        "--tls-cert",
        certs.client.certFile,
        "--tls-key",
        certs.client.keyFile,
      ];

      // By the certificate's DNS name (with a bare IP grpc-js sends it as the
      // TLS server name and Node warns: grpc/grpc-node#1919).
      const withFile = await runCli(["status", "--server", `localhost:${port}`, ...tls, "--token-file", tokenFile]);
      expect(withFile.stderr).toBe("");
      expect(withFile.code).toBe(0);
      expect(withFile.stdout).toContain("no backup has run yet");
      // The token from the environment; the address with the certificate's name.
      const withEnv = await runCli(
        ["status", "--server", `127.0.0.1:${port}`, ...tls, "--tls-server-name", "localhost", "--json"],
        { VMABACKUP_TOKEN: TOKEN_A },
      );
      expect(withEnv.stderr).toBe("");
      expect(withEnv.code).toBe(0);
      expect(withEnv.stdout.trim()).toBe("null");

      const noToken = await runCli(["status", "--server", address, ...tls], { VMABACKUP_TOKEN: "" });
      expect(noToken.code).toBe(1);
      expect(noToken.stderr).toContain("UNAUTHENTICATED");
      expect(noToken.stderr).toContain("--token-file");
      const noCert = await runCli([
        "status",
        "--server",
        address,
        "--tls-ca",
        certs.serverCa.certFile,
        "--token-file",
        tokenFile,
      ]);
      expect(noCert.code).toBe(1);
      expect(noCert.stderr).toContain("UNAVAILABLE");
      const missingKey = await runCli(["status", "--server", address, "--tls-cert", certs.client.certFile]);
      expect(missingKey.code).toBe(2);
      expect(missingKey.stderr).toContain("--tls-cert and --tls-key go together");

      const logged = stdout.join("\n");
      expect(logged).toContain('"refusal":"missing"');
      expect(logged).not.toContain(TOKEN_A);
    } finally {
      serve.kill("SIGTERM");
      await new Promise((resolve) => serve.on("close", resolve));
    }
  }, 30_000);
});
