// The proto as other toolchains meet it: per-language options for stub
// generators, and bare `buf lint` / `buf breaking` in a fresh clone, which
// has no node_modules and no .build/ (nothing the generate script lays out).
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { file_vmabackup_v1_backup } from "../gen/vmabackup/v1/backup_pb.js";

const run = promisify(execFile);
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BUF = path.join(REPO_ROOT, "node_modules/.bin/buf");

describe("backup.proto", () => {
  it("names its package for Go, Java, C#, PHP and Objective-C", () => {
    const options = file_vmabackup_v1_backup.proto.options!;
    expect(options.goPackage).toMatch(/\/vmabackup\/v1;vmabackupv1$/);
    expect(options).toMatchObject({
      javaPackage: "com.vmabackup.v1",
      javaMultipleFiles: true,
      javaOuterClassname: "BackupProto",
      csharpNamespace: "Vmabackup.V1",
      phpNamespace: "Vmabackup\\V1",
      objcClassPrefix: "VXX",
    });
    // Debian's grpc_tools.protoc (libprotoc 3.5) stops at an unknown option.
    expect(options.rubyPackage ?? "").toBe("");
  });
});

describe("buf in a fresh clone", () => {
  let clone: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    clone = await mkdtemp(path.join(os.tmpdir(), "vmabackup-clone-"));
    env = { ...process.env, BUF_CACHE_DIR: path.join(clone, ".buf-cache") };
    await run("git", ["clone", "--quiet", "--no-hardlinks", REPO_ROOT, path.join(clone, "repo")]);
  }, 30_000);

  afterAll(async () => {
    await rm(clone, { recursive: true, force: true });
  });

  it("lints with nothing but the checkout", async () => {
    const result = await run(BUF, ["lint"], { cwd: path.join(clone, "repo"), env });
    expect(result.stdout + result.stderr).toBe("");
  });

  it("checks breaking changes against a git ref, whose checkout has no .build/ either", async () => {
    // The clone's own HEAD stands for main: the same buf.yaml on both sides.
    const result = await run(BUF, ["breaking", "--against", ".git#ref=HEAD"], { cwd: path.join(clone, "repo"), env });
    expect(result.stdout + result.stderr).toBe("");
  });
});
