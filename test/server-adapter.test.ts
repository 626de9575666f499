// The protobuf-es <-> grpc-js adapter and the typed client, over a real
// loopback connection, with a small hand-written BackupService behind it so
// that transport behaviour is tested apart from the engine.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BackupService,
  BackupState,
  BackupStatusSchema,
  QueryBackupResponseSchema,
  WatchBackupResponseSchema,
} from "../gen/vmabackup/v1/backup_pb.js";
import { addService, createServiceDefinition } from "../src/server/grpc-adapter.js";
import type { ImplementationOf } from "../src/server/grpc-adapter.js";
import { createClient } from "../src/client/grpc-client.js";
import type { ClientOf } from "../src/client/grpc-client.js";

const BIG = 2n ** 60n + 7n;

/** Records what the server saw of each watch call. */
const watchEvents: string[] = [];
let lastWatchCancelled: Promise<void> = Promise.resolve();

const implementation: ImplementationOf<typeof BackupService> = {
  backup: (call, callback) => {
    if (call.request.backupFile === "fail.vma") {
      callback({ code: grpc.status.ALREADY_EXISTS, details: "backup_file: fail.vma exists" });
      return;
    }
    // Echo the request back through a status to check encoding both ways.
    callback(null, {
      $typeName: "vmabackup.v1.BackupResponse",
      status: create(BackupStatusSchema, {
        uuid: "echo",
        backupFile: call.request.backupFile,
        speedLimit: call.request.speedLimit,
        devices: call.request.devices.map((device, index) => ({
          name: device.name,
          devId: index + 1,
        })),
        startTime: timestampFromDate(new Date(1_700_000_000_123)),
      }),
    });
  },
  queryBackup: (call, callback) => {
    // Never answers when asked for "slow", to exercise deadlines and aborts.
    if (call.request.uuid === "slow") return;
    callback(null, create(QueryBackupResponseSchema, {}));
  },
  cancelBackup: (_call, callback) => {
    callback({ code: grpc.status.UNIMPLEMENTED, details: "no" });
  },
  watchBackup: (call) => {
    lastWatchCancelled = new Promise((resolve) => call.on("cancelled", () => resolve()));
    if (call.request.uuid === "open") {
      // One message, then the stream stays open until the client leaves.
      watchEvents.push("open");
      call.write(create(WatchBackupResponseSchema, { status: { uuid: "first" } }));
      return;
    }
    const count = Number(call.request.uuid);
    if (count < 0) {
      call.emit("error", { code: grpc.status.NOT_FOUND, details: "uuid: no such job" });
      return;
    }
    watchEvents.push("counted");
    for (let i = 0; i < count; i += 1) {
      call.write(
        create(WatchBackupResponseSchema, {
          status: { uuid: String(i), state: BackupState.ACTIVE, transferredBytes: BigInt(i) },
        }),
      );
    }
    call.end();
  },
  listBackups: (_call, callback) => {
    callback({ code: grpc.status.UNIMPLEMENTED, details: "no" });
  },
  setBackupSpeed: (_call, callback) => {
    callback({ code: grpc.status.UNIMPLEMENTED, details: "no" });
  },
  deleteBackup: (_call, callback) => {
    callback({ code: grpc.status.UNIMPLEMENTED, details: "no" });
  },
};

let server: grpc.Server;
let client: ClientOf<typeof BackupService>;

beforeAll(async () => {
  server = new grpc.Server();
  addService(server, BackupService, implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  client = createClient(BackupService, `127.0.0.1:${port}`);
});

afterAll(() => {
  client.close();
  server.forceShutdown();
});

describe("createServiceDefinition", () => {
  it("derives paths and streaming flags from the descriptor", () => {
    const definition = createServiceDefinition(BackupService);
    expect(Object.keys(definition)).toEqual([
      "backup",
      "queryBackup",
      "cancelBackup",
      "watchBackup",
      "listBackups",
      "setBackupSpeed",
      "deleteBackup",
    ]);
    expect(definition.backup.path).toBe("/vmabackup.v1.BackupService/Backup");
    expect(definition.backup.requestStream).toBe(false);
    expect(definition.backup.responseStream).toBe(false);
    expect(definition.watchBackup.path).toBe("/vmabackup.v1.BackupService/WatchBackup");
    expect(definition.watchBackup.responseStream).toBe(true);
    expect(definition.watchBackup.requestStream).toBe(false);
  });

  it("serializes without copying and round-trips", () => {
    const definition = createServiceDefinition(BackupService);
    const bytes = definition.backup.requestSerialize(
      create(BackupService.method.backup.input, { backupFile: "x.vma", speedLimit: BIG }),
    );
    expect(Buffer.isBuffer(bytes)).toBe(true);
    const decoded = definition.backup.requestDeserialize(bytes);
    expect(decoded.backupFile).toBe("x.vma");
    expect(decoded.speedLimit).toBe(BIG);
  });
});

describe("typed client", () => {
  it("makes unary calls with 64-bit integers, nested messages and timestamps", async () => {
    const response = await client.backup({
      backupFile: "a.vma",
      speedLimit: BIG,
      devices: [
        { name: "drive-scsi0", path: "/x" },
        { name: "drive-scsi1", path: "/y" },
      ],
    });
    expect(response.status?.backupFile).toBe("a.vma");
    expect(response.status?.speedLimit).toBe(BIG);
    expect(response.status?.devices.map((d) => [d.name, d.devId])).toEqual([
      ["drive-scsi0", 1],
      ["drive-scsi1", 2],
    ]);
    expect(response.status?.startTime?.seconds).toBe(1_700_000_000n);
    expect(response.status?.startTime?.nanos).toBe(123_000_000);
  });

  it("rejects with the status code and message of a failed call", async () => {
    await expect(client.backup({ backupFile: "fail.vma" })).rejects.toMatchObject({
      code: grpc.status.ALREADY_EXISTS,
      details: "backup_file: fail.vma exists",
    });
  });

  it("honours deadlines and abort signals", async () => {
    await expect(client.queryBackup({ uuid: "slow" }, { deadline: Date.now() + 100 })).rejects.toMatchObject({
      code: grpc.status.DEADLINE_EXCEEDED,
    });
    const controller = new AbortController();
    const pending = client.queryBackup({ uuid: "slow" }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(pending).rejects.toMatchObject({ code: grpc.status.CANCELLED });
  });

  it("iterates a server stream to its end", async () => {
    const seen: string[] = [];
    for await (const message of client.watchBackup({ uuid: "40" })) {
      seen.push(message.status?.uuid ?? "?");
    }
    expect(seen).toHaveLength(40);
    expect(seen[39]).toBe("39");
  });

  it("throws the status of a stream that ends with an error", async () => {
    const consume = async (): Promise<void> => {
      for await (const _ of client.watchBackup({ uuid: "-1" })) {
        // no messages expected
      }
    };
    await expect(consume()).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it("cancels the call when the consumer breaks early", async () => {
    watchEvents.length = 0;
    let received = "";
    for await (const message of client.watchBackup({ uuid: "open" })) {
      received = message.status?.uuid ?? "";
      break;
    }
    expect(received).toBe("first");
    expect(watchEvents).toEqual(["open"]);
    // The server learns that the client left; the test times out otherwise.
    await lastWatchCancelled;
  });

  it("cancels an idle stream when the signal aborts", async () => {
    const controller = new AbortController();
    const consume = async (): Promise<string[]> => {
      const seen: string[] = [];
      for await (const message of client.watchBackup({ uuid: "open" }, { signal: controller.signal })) {
        seen.push(message.status?.uuid ?? "");
        controller.abort();
      }
      return seen;
    };
    await expect(consume()).rejects.toMatchObject({ code: grpc.status.CANCELLED });
    await lastWatchCancelled;
  });

  it("does not start a stream that is never iterated", async () => {
    watchEvents.length = 0;
    client.watchBackup({ uuid: "3" });
    expect(watchEvents).toEqual([]);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(watchEvents).toEqual([]);
  });
});
