// Reflection as a client in another language meets it: Debian's Python
// (test/python/reflection_client.py) knows no vmabackup .proto, builds every
// served file into a DescriptorPool (the C++ implementation, as strict as
// protoc) and calls Health/Check and QueryBackup with messages made from
// them, like grpcurl. Without a token it must still reach health.
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

const run = promisify(execFile);
const PYTHON = "/usr/bin/python3";
const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));
const REFLECTION_PROTO_DIR = path.join(REPO_ROOT, "node_modules/@grpc/reflection/build/proto/grpc/reflection/v1alpha");
const CLIENT_SCRIPT = fileURLToPath(new URL("./python/reflection_client.py", import.meta.url));
const TOKEN = "vmab-test-token-python-reflection";

interface Summary {
  services: string[];
  pool_errors: Record<string, string[]>;
  comments: Record<string, string>;
  extension_numbers: { numbers?: number[]; error?: number };
  health_check: { ok: boolean; code?: string };
  query_backup?: { ok: boolean; code?: string };
}

let workDir: string;
let server: SafetyServer;

async function reflect(token?: string): Promise<Summary> {
  const args = ["-s", CLIENT_SCRIPT, "--stubs", workDir, "--address", server.address];
  const { stdout } = await run(PYTHON, token === undefined ? args : [...args, "--token", token], { timeout: 30_000 });
  return JSON.parse(stdout) as Summary;
}

beforeAll(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-pyreflect-"));
  // Compiled as a top-level reflection.proto: a grpc/ folder would shadow grpcio.
  await run(PYTHON, [
    "-s",
    "-m",
    "grpc_tools.protoc",
    `-I${REFLECTION_PROTO_DIR}`,
    `--python_out=${workDir}`,
    `--grpc_python_out=${workDir}`,
    path.join(REFLECTION_PROTO_DIR, "reflection.proto"),
  ]);
  const tokens = BearerTokens.parse(TOKEN, "tokens");
  server = await startSafetyServer({
    interceptors: [createAuthInterceptor({ tokens, logger: pino({ level: "silent" }) })],
  });
});

afterAll(async () => {
  await server?.stop();
  await rm(workDir, { recursive: true, force: true });
});

describe("a Python client built from reflection alone", () => {
  it("builds every served file, shows the comments and calls both services", async () => {
    const summary = await reflect(TOKEN);
    expect(summary.services).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "vmabackup.v1.BackupService",
    ]);
    for (const errors of Object.values(summary.pool_errors)) expect(errors).toEqual([]);
    expect(summary.comments["vmabackup.v1.BackupService"]).toContain("BackupService starts, inspects, cancels");
    expect(summary.extension_numbers).toEqual({ numbers: [] });
    expect(summary.health_check).toEqual({ ok: true, fields: ["status"] });
    expect(summary.query_backup?.ok).toBe(true);
  });

  it("checks health without a token and sees nothing of the backup API", async () => {
    const summary = await reflect();
    expect(summary.services).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
    expect(summary.pool_errors["grpc.health.v1.Health"]).toEqual([]);
    expect(summary.health_check).toEqual({ ok: true, fields: ["status"] });
    expect(summary.query_backup).toBeUndefined();
  });
});
