// The pure parts of the server: protobuf <-> engine type mapping and the
// mapping of engine errors to gRPC status codes.
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  BackupFormat,
  BackupRequestSchema,
  BackupState,
} from "../gen/vmabackup/v1/backup_pb.js";
import { EngineError } from "../src/engine/errors.js";
import type { EngineErrorKind } from "../src/engine/errors.js";
import type { JobStatus } from "../src/engine/types.js";
import { toRpcError } from "../src/server/rpc-errors.js";
import { toBackupSpec, toBackupStatus, toJobSelector } from "../src/server/status-codec.js";

function engineErrorOf(action: () => unknown): EngineError {
  try {
    action();
  } catch (error) {
    if (error instanceof EngineError) return error;
    throw error;
  }
  throw new Error("expected an EngineError");
}

describe("toBackupSpec", () => {
  it("maps every field and treats an unspecified format as VMA", () => {
    const data = Uint8Array.of(1, 2, 3);
    const spec = toBackupSpec(
      create(BackupRequestSchema, {
        backupFile: "vm-100.vma",
        devices: [{ name: "drive-scsi0", path: "/images/a.raw" }],
        configs: [{ name: "qemu-server.conf", data }],
        speedLimit: 52_428_800n,
      }),
    );
    expect(spec).toEqual({
      backupFile: "vm-100.vma",
      format: "vma",
      devices: [{ name: "drive-scsi0", path: "/images/a.raw" }],
      configs: [{ name: "qemu-server.conf", data }],
      speedLimit: 52_428_800,
    });
    expect(toBackupSpec(create(BackupRequestSchema, { format: BackupFormat.VMA })).format).toBe("vma");
  });

  it("accepts the largest safe speed limit and refuses anything above it", () => {
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    expect(toBackupSpec(create(BackupRequestSchema, { speedLimit: max })).speedLimit).toBe(
      Number.MAX_SAFE_INTEGER,
    );
    const error = engineErrorOf(() => toBackupSpec(create(BackupRequestSchema, { speedLimit: max + 1n })));
    expect(error.kind).toBe("invalid-argument");
    expect(error.field).toBe("speed_limit");
    expect(error.message).toContain("speed_limit");
  });

  it("refuses format values the proto does not define", () => {
    const error = engineErrorOf(() => toBackupSpec(create(BackupRequestSchema, { format: 7 as BackupFormat })));
    expect(error.kind).toBe("invalid-argument");
    expect(error.field).toBe("format");
    expect(error.message).toMatch(/^format: .*7/);
  });
});

describe("toJobSelector", () => {
  it("maps empty to undefined and normalises case", () => {
    expect(toJobSelector("")).toBeUndefined();
    expect(toJobSelector("0B6E3A64-6C4E-4C5D-9E55-7F1A2B3C4D5E")).toBe("0b6e3a64-6c4e-4c5d-9e55-7f1a2b3c4d5e");
  });

  it.each(["x", "0b6e3a64-6c4e-4c5d-9e55-7f1a2b3c4d5", "0b6e3a64-6c4e-4c5d-9e55-7f1a2b3c4d5e\n", "../etc"])(
    "refuses %j",
    (text) => {
      const error = engineErrorOf(() => toJobSelector(text));
      expect(error.kind).toBe("invalid-argument");
      expect(error.message).toMatch(/^uuid: /);
    },
  );
});

describe("toBackupStatus", () => {
  const start = new Date("2024-05-06T07:08:09.123Z");
  const status: JobStatus = {
    uuid: "0b6e3a64-6c4e-4c5d-9e55-7f1a2b3c4d5e",
    state: "error",
    errorMessage: "devices[0] drive-scsi0: read failed at byte 65536",
    backupFile: "/backups/a.vma",
    format: "vma",
    totalBytes: 2 ** 40 + 5,
    transferredBytes: 65536,
    zeroBytes: 4096,
    startTime: start,
    endTime: new Date(start.getTime() + 1500),
    speedLimit: 1_000_000,
    devices: [{ name: "drive-scsi0", devId: 1, size: 2 ** 40 + 5, transferredBytes: 65536, zeroBytes: 4096 }],
  };

  it("maps states, counters as uint64 and times as timestamps", () => {
    const message = toBackupStatus(status);
    expect(message.state).toBe(BackupState.ERROR);
    expect(message.format).toBe(BackupFormat.VMA);
    expect(message.totalBytes).toBe(2n ** 40n + 5n);
    expect(message.transferredBytes).toBe(65536n);
    expect(message.zeroBytes).toBe(4096n);
    expect(message.speedLimit).toBe(1_000_000n);
    expect(message.errorMessage).toBe(status.errorMessage);
    expect(timestampDate(message.startTime!)).toEqual(start);
    expect(timestampDate(message.endTime!).getTime()).toBe(start.getTime() + 1500);
    expect(message.devices[0]).toMatchObject({ name: "drive-scsi0", devId: 1, size: 2n ** 40n + 5n });
  });

  it("leaves end_time unset while active", () => {
    const message = toBackupStatus({ ...status, state: "active", endTime: undefined });
    expect(message.state).toBe(BackupState.ACTIVE);
    expect(message.endTime).toBeUndefined();
    expect(toBackupStatus({ ...status, state: "done" }).state).toBe(BackupState.DONE);
    expect(toBackupStatus({ ...status, state: "cancelled" }).state).toBe(BackupState.CANCELLED);
  });
});

describe("toRpcError", () => {
  const cases: Array<[EngineErrorKind, grpc.status]> = [
    ["invalid-argument", grpc.status.INVALID_ARGUMENT],
    ["not-found", grpc.status.NOT_FOUND],
    ["already-exists", grpc.status.ALREADY_EXISTS],
    ["failed-precondition", grpc.status.FAILED_PRECONDITION],
    ["permission-denied", grpc.status.PERMISSION_DENIED],
  ];
  it.each(cases)("maps %s to code %i with the engine's message", (kind, code) => {
    const failure = toRpcError(new EngineError(kind, "SOME_REASON", "devices[0].path: nope", "devices[0].path"));
    expect(failure.code).toBe(code);
    expect(failure.details).toBe("devices[0].path: nope");
  });

  it.each([
    new TypeError("cannot read properties of undefined (secret /path)"),
    new EngineError("internal", "INTERNAL", "internal error: EIO at secret /path"),
  ])("hides %s behind a generic INTERNAL message", (error) => {
    const failure = toRpcError(error);
    expect(failure.code).toBe(grpc.status.INTERNAL);
    expect(failure.details).not.toContain("secret");
  });
});
