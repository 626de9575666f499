// `buf curl`, a real reflection client (Go, protodesc: as strict as grpcurl
// 1.9), against a real server: it builds every schema from what reflection
// serves, so wrong descriptors (a health map entry not named StatusesEntry,
// unqualified type names) make it refuse the call. Without a token, health
// must work through reflection while the backup API stays hidden.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BearerTokens, createAuthInterceptor } from "../src/server/auth.js";
import { startSafetyServer } from "./helpers/safety-server.js";
import type { SafetyServer } from "./helpers/safety-server.js";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

const run = promisify(execFile);
const BUF = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../node_modules/.bin/buf");
const TOKEN = "vmab-test-token-buf-curl-5c1d";

let cacheDir: string;

/** Runs `buf curl` over plaintext HTTP/2; resolves with stdout, stderr and the exit code. */
async function bufCurl(
  address: string,
  args: readonly string[],
): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await run(
      BUF,
      [
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        ...args.slice(0, -1),
        `http://${address}${args.at(-1)}`,
      ],
      { env: { ...process.env, BUF_CACHE_DIR: cacheDir }, timeout: 20_000 },
    );
    return { stdout, stderr, code: 0 };
  } catch (error) {
    const failure = error as { stdout?: string; stderr?: string; code?: number };
    return { stdout: failure.stdout ?? "", stderr: failure.stderr ?? "", code: failure.code ?? -1 };
  }
}

beforeAll(async () => {
  cacheDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-buf-cache-"));
});

afterAll(async () => {
  await rm(cacheDir, { recursive: true, force: true });
});

describe("buf curl without authentication", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server.stop();
  });

  it("lists the methods of every service", async () => {
    const result = await bufCurl(server.address, ["--list-methods", ""]);
    expect(result.stderr).toBe("");
    const methods = result.stdout.trim().split("\n");
    expect(methods).toEqual(
      expect.arrayContaining([
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health/List",
        "vmabackup.v1.BackupService/Backup",
        "vmabackup.v1.BackupService/WatchBackup",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      ]),
    );
  });

  it("calls Health/Check and Health/List", async () => {
    const check = await bufCurl(server.address, ["/grpc.health.v1.Health/Check"]);
    expect(check.stderr).toBe("");
    expect(JSON.parse(check.stdout)).toEqual({ status: "SERVING" });
    const list = await bufCurl(server.address, ["/grpc.health.v1.Health/List"]);
    expect(JSON.parse(list.stdout).statuses["vmabackup.v1.BackupService"]).toEqual({ status: "SERVING" });
  });

  it("calls BackupService RPCs, successful and refused, with their error details", async () => {
    const query = await bufCurl(server.address, ["-d", "{}", "/vmabackup.v1.BackupService/QueryBackup"]);
    expect(query).toMatchObject({ code: 0, stdout: "{}\n" });
    const refused = await bufCurl(server.address, ["-d", "{}", "/vmabackup.v1.BackupService/Backup"]);
    const body = JSON.parse(refused.stderr) as { code: string; details: Array<{ type: string }> };
    expect(body.code).toBe("invalid_argument");
    // buf curl prints details undecoded; reflection of google.rpc is checked in server-reflection.test.ts.
    expect(body.details.map((detail) => detail.type)).toEqual(["google.rpc.ErrorInfo", "google.rpc.BadRequest"]);
  });
});

describe("buf curl against a server that requires a token", () => {
  let server: SafetyServer;
  beforeAll(async () => {
    const tokens = BearerTokens.parse(TOKEN, "tokens");
    server = await startSafetyServer({
      interceptors: [createAuthInterceptor({ tokens, logger: pino({ level: "silent" }) })],
    });
  });
  afterAll(async () => {
    await server.stop();
  });

  it("checks health without a token, through reflection", async () => {
    const check = await bufCurl(server.address, ["/grpc.health.v1.Health/Check"]);
    expect(check.stderr).toBe("");
    expect(JSON.parse(check.stdout)).toEqual({ status: "SERVING" });
  });

  it("shows an anonymous caller health and reflection only", async () => {
    const services = await bufCurl(server.address, ["--list-services", ""]);
    expect(services.stdout.trim().split("\n").sort()).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
    const query = await bufCurl(server.address, ["-d", "{}", "/vmabackup.v1.BackupService/QueryBackup"]);
    expect(query.code).not.toBe(0);
    expect(query.stderr).toMatch(/vmabackup\.v1\.BackupService/);
    const wrong = await bufCurl(server.address, [
      "-H",
      "authorization: Bearer wrong",
      "--reflect-header",
      "*",
      "--list-services",
      "",
    ]);
    expect(wrong.stderr).toMatch(/not authenticated/);
  });

  it("shows everything to a caller with a token", async () => {
    // --reflect-header '*': buf curl sends -H headers on reflection calls too.
    const header = ["-H", `authorization: Bearer ${TOKEN}`, "--reflect-header", "*"];
    const services = await bufCurl(server.address, [...header, "--list-services", ""]);
    expect(services.stdout).toContain("vmabackup.v1.BackupService");
    const query = await bufCurl(server.address, [...header, "-d", "{}", "/vmabackup.v1.BackupService/QueryBackup"]);
    expect(query).toMatchObject({ code: 0, stdout: "{}\n" });
  });
});
