// Requests the server must refuse plainly: archive names too long for their
// temporary name, and bytes that are not a protobuf message at all. Both
// are the client's mistake, so INVALID_ARGUMENT with the usual details, never
// FAILED_PRECONDITION with a raw path or a bare INTERNAL.
import { readdir } from "node:fs/promises";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import { expectRefusal } from "./helpers/rpc-failure.js";
import { startSafetyServer, waitForEnd } from "./helpers/safety-server.js";
import type { SafetyServer } from "./helpers/safety-server.js";

let server: SafetyServer;
let source: string;

beforeAll(async () => {
  server = await startSafetyServer();
  source = await server.writeSource("disk.raw", Buffer.alloc(64 * 1024, 9));
});

afterAll(async () => {
  await server?.stop();
});

describe("backup_file names near NAME_MAX", () => {
  it(
    "refuses a name whose .partial would exceed 255 bytes as INVALID_ARGUMENT naming the limit, not the " + "path",
    async () => {
      // 248..255 bytes: the final name fits, "<name>.partial" does not.
      for (const bytes of [248, 250, 255, 256, 300]) {
        const name = `${"n".repeat(bytes - ".vma".length)}.vma`;
        const error = await expectRefusal(
          server.client.backup({ backupFile: name, devices: [{ name: "drive-scsi0", path: source }] }),
          grpc.status.INVALID_ARGUMENT,
          "BACKUP_FILE_NAME_TOO_LONG",
          "backup_file",
        );
        expect(error.details).toMatch(
          new RegExp(`^backup_file: the file name is ${bytes} bytes of UTF-8, at most 247 allowed`),
        );
        expect(error.details).not.toContain("nnnnnnnnnnnnnnnn");
      }
      // Multi-byte: counted in bytes, not characters (124 x "é" = 248 bytes).
      await expectRefusal(
        server.client.backup({
          backupFile: `${"é".repeat(122)}.vma`,
          devices: [{ name: "drive-scsi0", path: source }],
        }),
        grpc.status.INVALID_ARGUMENT,
        "BACKUP_FILE_NAME_TOO_LONG",
        "backup_file",
      );
      expect(await readdir(server.backupDir)).toEqual([]);
    },
  );

  it("accepts a name of exactly 247 bytes", async () => {
    const name = `${"k".repeat(247 - ".vma".length)}.vma`;
    const started = await server.client.backup({ backupFile: name, devices: [{ name: "drive-scsi0", path: source }] });
    expect((await waitForEnd(server.client, started.status!.uuid)).state).toBe(BackupState.DONE);
    expect(await readdir(server.backupDir)).toEqual([name]);
  });
});

/** Sends `bytes` as the request of `method` (unary or server streaming) and returns the outcome as a promise. */
function rawCall(method: string, kind: "unary" | "stream", bytes: Uint8Array): Promise<unknown> {
  const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
  const identity = (value: Buffer): Buffer => value;
  const request = Buffer.from(bytes);
  return new Promise<unknown>((resolve, reject) => {
    if (kind === "unary") {
      client.makeUnaryRequest(method, identity, identity, request, (error, response) =>
        error === null ? resolve(response) : reject(error),
      );
      return;
    }
    const stream = client.makeServerStreamRequest(method, identity, identity, request, {
      deadline: new Date(Date.now() + 2000),
    });
    stream.on("data", () => undefined);
    stream.on("error", reject);
    stream.on("end", () => resolve(undefined));
  }).finally(() => client.close());
}

describe("malformed protobuf", () => {
  // Field 1 (backup_file / uuid), length-delimited, claiming 127 bytes that never come.
  const truncated = Uint8Array.of(0x0a, 0x7f, 0x61);
  // A varint that never ends.
  const endlessVarint = Uint8Array.of(0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
  // Wire type 7 does not exist.
  const badWireType = Uint8Array.of(0x0f);

  it.each([
    ["Backup", "unary"],
    ["QueryBackup", "unary"],
    ["WatchBackup", "stream"],
  ] as const)("%s: INVALID_ARGUMENT with ErrorInfo REQUEST_MALFORMED, not INTERNAL", async (method, kind) => {
    for (const bytes of [truncated, endlessVarint, badWireType]) {
      const error = await expectRefusal(
        rawCall(`/vmabackup.v1.BackupService/${method}`, kind, bytes),
        grpc.status.INVALID_ARGUMENT,
        "REQUEST_MALFORMED",
      );
      expect(error.details).toMatch(/^request: not a valid vmabackup\.v1\.\w+Request message/);
    }
    expect(await readdir(server.backupDir)).not.toContain("a");
  });
});
