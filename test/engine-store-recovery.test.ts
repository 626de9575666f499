// Startup recovery through a store (recover-store-jobs.ts): a job that died
// after its S3 upload was completed, before DONE was stored, ends DONE once
// the object it committed reads back valid and complete with its uuid; the
// recorded reference then lets delete_archive remove exactly that object.
// An object of the same name that is not the job's own (another upload's
// token) ends the job in error and stays.
import * as path from "node:path";
import { HeadObjectCommand, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BackupEngine } from "../src/engine/backup-engine.js";
import { INTERRUPTED_MESSAGE, JOB_STORE_FILE } from "../src/engine/backup-engine.js";
import { JobStore } from "../src/store/job-store.js";
import type { StoredJob } from "../src/store/job-store.js";
import {
  backupSpec,
  blockPattern,
  KiB,
  MiB,
  openEngine,
  useSandboxWithEngines,
  waitForEnd,
  writeSource,
} from "./engine-helpers.js";
import { startS3Server, type TestS3Server, testS3Client } from "./helpers/s3-server.js";

const fixture = useSandboxWithEngines();
let s3: TestS3Server;
let s3Client: S3Client;

beforeAll(async () => {
  s3 = await startS3Server();
  s3Client = testS3Client(s3.endpoint);
});

afterAll(async () => {
  s3Client.destroy();
  await s3.close();
});

async function open(): Promise<BackupEngine> {
  const { engine } = await openEngine(fixture.sandbox, {
    targets: [{ name: "offsite", bucket: s3.bucket, prefix: "recovery" }],
    s3: { endpoint: s3.endpoint, forcePathStyle: true },
  });
  return fixture.adopt(engine);
}

function withStore<T>(action: (store: JobStore) => T): T {
  const store = JobStore.open(path.join(fixture.sandbox.state, JOB_STORE_FILE));
  try {
    return action(store);
  } finally {
    store.close();
  }
}

/** Runs a backup to the S3 target to DONE, then puts back its ACTIVE record: as kill -9 after the upload completed. */
async function diedAfterCommit(name: string): Promise<{ uuid: string; key: string }> {
  const engine = await open();
  const source = await writeSource(
    fixture.sandbox,
    `${name}.raw`,
    blockPattern(MiB, (block) => block % 4 === 0),
  );
  const started = await engine.start(
    backupSpec({
      backupFile: `${name}.vma.zst`,
      target: "offsite",
      devices: [{ name: "d", source: { kind: "path", path: source } }],
    }),
  );
  const active: StoredJob | undefined = withStore((store) => store.get(started.uuid));
  expect(active?.state).toBe("active");
  const end = await waitForEnd(engine, started.uuid);
  expect(end.state, end.errorMessage).toBe("done");
  await engine.shutdown();
  withStore((store) => store.save(active!));
  return { uuid: started.uuid, key: `recovery/${name}.vma.zst` };
}

describe("recovery through the S3 store", () => {
  // AWS credentials for the standard chain: s3rver takes any.
  beforeAll(() => {
    process.env.AWS_ACCESS_KEY_ID = "S3RVER";
    process.env.AWS_SECRET_ACCESS_KEY = "S3RVER";
  });
  afterAll(() => {
    delete process.env.AWS_ACCESS_KEY_ID;
    delete process.env.AWS_SECRET_ACCESS_KEY;
  });

  it("ends a job whose upload was completed DONE, and delete_archive removes the object", async () => {
    const { uuid, key } = await diedAfterCommit("committed");
    const engine = await open();
    const status = engine.query(uuid)!;
    expect(status.state, status.errorMessage).toBe("done");
    expect(status.transferredBytes).toBe(MiB);
    // Every fourth 4 KiB block is zero.
    expect(status.zeroBytes).toBe((MiB / (4 * KiB) / 4) * 4 * KiB);
    await engine.delete(uuid, { deleteArchive: true });
    await expect(s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }))).rejects.toMatchObject({
      name: "NotFound",
    });
  });

  it("leaves an object of the same name that is not the job's own, and ends the job in error", async () => {
    const { uuid, key } = await diedAfterCommit("replaced");
    await s3Client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: "another server's archive" }));
    const engine = await open();
    expect(engine.query(uuid)).toMatchObject({ state: "error", errorMessage: INTERRUPTED_MESSAGE });
    const head = await s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(head.ContentLength).toBe("another server's archive".length);
  });
});
