// The operator's targets: `--target NAME=s3://bucket/prefix` parsed with
// messages that say what to fix, and built into working stores (the backup
// dir as "local", S3 targets against s3rver).
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buffer as readAll } from "node:stream/consumers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createStores, DEFAULT_TARGET, parseTarget, TargetConfigError } from "../src/stores/store-targets.js";
import { startS3Server, type TestS3Server, writeS3rverCredentials } from "./helpers/s3-server.js";

let s3: TestS3Server;
let backupDir: string;

beforeAll(async () => {
  s3 = await startS3Server();
  backupDir = await realpath(await mkdtemp(join(tmpdir(), "store-targets-")));
});

afterAll(async () => {
  await s3?.close();
  if (backupDir !== undefined) await rm(backupDir, { recursive: true, force: true });
});

describe("parseTarget", () => {
  it("takes NAME=s3://bucket/prefix, the prefix without trailing slashes", () => {
    expect(parseTarget("offsite=s3://pve-backups/cluster-a/dump/")).toEqual({
      name: "offsite",
      bucket: "pve-backups",
      prefix: "cluster-a/dump",
    });
    expect(parseTarget("b2=s3://bucket")).toEqual({ name: "b2", bucket: "bucket", prefix: "" });
  });

  it.each([
    ["s3://bucket/x", "expected NAME=s3://BUCKET/PREFIX"],
    ["Off=s3://bucket/x", "the name must be 1-32 lower-case letters"],
    ["local=s3://bucket/x", "is the backup directory's store"],
    ["off=/srv/backups", "is not an s3:// URL"],
    ["off=s3://B/x", "the bucket name must be 3-63 lower-case letters"],
  ])("refuses %s, saying what to fix", (text, message) => {
    expect(() => parseTarget(text)).toThrow(TargetConfigError);
    expect(() => parseTarget(text)).toThrow(message);
  });
});

describe("createStores", () => {
  it("builds the backup dir as the default store and each S3 target, which store and read back", async () => {
    const stores = createStores({
      backupDir,
      targets: [parseTarget(`offsite=s3://${s3.bucket}/fleet`)],
      s3: { endpoint: s3.endpoint, forcePathStyle: true, credentialsFile: join(backupDir, "no-such-file") },
    });
    expect([...stores.keys()]).toEqual([DEFAULT_TARGET, "offsite"]);
    expect(stores.get("offsite")?.location("a.vma")).toBe(`s3://${s3.bucket}/fleet/a.vma`);
    expect(stores.get(DEFAULT_TARGET)?.location("a.vma")).toBe(join(backupDir, "a.vma"));
    // Credentials come from the named file only; a missing file fails the request, not the start.
    await expect(stores.get("offsite")?.create("a.vma")).rejects.toThrow(/credentials|profile/i);
  });

  it("reads credentials from the file it is given", async () => {
    const credentials = join(backupDir, "credentials");
    await writeS3rverCredentials(credentials);
    const stores = createStores({
      backupDir,
      targets: [parseTarget(`offsite=s3://${s3.bucket}/fleet`)],
      s3: { endpoint: s3.endpoint, forcePathStyle: true, credentialsFile: credentials },
    });
    const store = stores.get("offsite");
    if (store === undefined) throw new Error("no offsite store");
    const upload = await store.create("b.vma");
    await upload.write([Buffer.from("archive bytes")]);
    const ref = await upload.commit();
    expect((await readAll(await store.read("b.vma"))).toString()).toBe("archive bytes");
    expect(await store.remove(ref)).toBe("removed");
  });

  it("refuses a target name used twice", () => {
    const target = parseTarget(`twice=s3://${s3.bucket}/x`);
    expect(() => createStores({ backupDir, targets: [target, target], s3: { endpoint: s3.endpoint } })).toThrow(
      "the name is used twice",
    );
  });
});
