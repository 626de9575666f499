// The pure parts of the server: protobuf <-> engine type mapping and the
// mapping of engine errors to gRPC status codes with rich error details.
import { create } from "@bufbuild/protobuf";
import { durationMs, timestampDate } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  BackupFormat,
  BackupRequestSchema,
  BackupState,
  ListBackupsRequestSchema,
} from "../gen/vmabackup/v1/backup_pb.js";
import { EngineError } from "../src/engine/errors.js";
import type { EngineErrorKind } from "../src/engine/errors.js";
import type { JobStatus } from "../src/engine/types.js";
import { readErrorDetails } from "../src/client/rpc-error-details.js";
import { toRpcError } from "../src/server/rpc-errors.js";
import { STATUS_DETAILS_KEY } from "../src/wire/metadata-keys.js";
import {
  toBackupSpec,
  toBackupStatus,
  toJobSelector,
  toListQuery,
  toRequiredUuid,
  toRevision,
} from "../src/server/status-codec.js";

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
      devices: [{ name: "drive-scsi0", source: { kind: "path", path: "/images/a.raw" } }],
      configs: [{ name: "qemu-server.conf", data }],
      speedLimit: 52_428_800,
    });
    expect(toBackupSpec(create(BackupRequestSchema, { format: BackupFormat.VMA })).format).toBe("vma");
  });

  it("accepts the largest safe speed limit and refuses anything above it", () => {
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    expect(toBackupSpec(create(BackupRequestSchema, { speedLimit: max })).speedLimit).toBe(Number.MAX_SAFE_INTEGER);
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
    devices: [
      {
        name: "drive-scsi0",
        devId: 1,
        size: 2 ** 40 + 5,
        transferredBytes: 65536,
        zeroBytes: 4096,
        sourceKind: "path",
        source: "/src/d.raw",
        scratchBytes: 0,
      },
    ],
    rate: 0,
    revision: 2 ** 40 + 1,
    updateTime: new Date(start.getTime() + 1500),
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

  it("maps revision, update time and request id; a finished job has rate 0 and no ETA", () => {
    const message = toBackupStatus({ ...status, requestId: "retry-7" });
    expect(message.revision).toBe(2n ** 40n + 1n);
    expect(timestampDate(message.updateTime!).getTime()).toBe(start.getTime() + 1500);
    expect(message.requestId).toBe("retry-7");
    expect(message.rate).toBe(0n);
    expect(message.eta).toBeUndefined();
    expect(toBackupStatus(status).requestId).toBe("");
  });

  it("sends an active job's rate in whole bytes per second and its ETA as a Duration", () => {
    const { endTime: _end, ...ended } = status;
    const active = { ...ended, state: "active" as const };
    const message = toBackupStatus({ ...active, rate: 2_097_151.6, etaMs: 61_250.4 });
    expect(message.rate).toBe(2_097_152n);
    expect(durationMs(message.eta!)).toBe(61_250);
    expect(message.eta).toMatchObject({ seconds: 61n, nanos: 250_000_000 });
    // No estimate yet: eta stays unset rather than claiming "0 s left".
    expect(toBackupStatus({ ...active, rate: 0 }).eta).toBeUndefined();
    // Nonsense from a measurement never reaches the wire as a negative or NaN.
    const nonsense = toBackupStatus({ ...active, rate: Number.NaN, etaMs: Number.POSITIVE_INFINITY });
    expect(nonsense.rate).toBe(0n);
    expect(nonsense.eta).toBeUndefined();
  });

  it("leaves end_time unset while active", () => {
    const { endTime: _end, ...ended } = status;
    const message = toBackupStatus({ ...ended, state: "active" });
    expect(message.state).toBe(BackupState.ACTIVE);
    expect(message.endTime).toBeUndefined();
    expect(toBackupStatus({ ...status, state: "done" }).state).toBe(BackupState.DONE);
    expect(toBackupStatus({ ...status, state: "cancelled" }).state).toBe(BackupState.CANCELLED);
  });
});

describe("toBackupSpec request_id", () => {
  it("passes a request id on and treats an empty one as none", () => {
    expect(toBackupSpec(create(BackupRequestSchema, { requestId: "nightly-101" })).requestId).toBe("nightly-101");
    expect(toBackupSpec(create(BackupRequestSchema, {}))).not.toHaveProperty("requestId");
  });
});

describe("toListQuery", () => {
  it("passes page size, token and states on, each state once", () => {
    const query = toListQuery(
      create(ListBackupsRequestSchema, {
        pageSize: 20,
        pageToken: "abc",
        states: [BackupState.DONE, BackupState.ERROR, BackupState.DONE],
      }),
    );
    expect(query).toEqual({ pageSize: 20, pageToken: "abc", states: ["done", "error"] });
    expect(toListQuery(create(ListBackupsRequestSchema, {}))).toEqual({ pageSize: 0, states: [] });
  });

  it("refuses a negative page size", () => {
    const error = engineErrorOf(() => toListQuery(create(ListBackupsRequestSchema, { pageSize: -1 })));
    expect(error).toMatchObject({ kind: "invalid-argument", reason: "PAGE_SIZE_INVALID", field: "page_size" });
  });

  it.each([
    [[BackupState.DONE, 9 as BackupState], "states[1]", /unknown value 9/],
    [[BackupState.UNSPECIFIED], "states[0]", /UNSPECIFIED/],
  ])("refuses the states filter %j", (states, field, message) => {
    const error = engineErrorOf(() => toListQuery(create(ListBackupsRequestSchema, { states })));
    expect(error).toMatchObject({ kind: "invalid-argument", reason: "JOB_STATE_INVALID", field });
    expect(error.message).toMatch(message);
  });
});

describe("toRequiredUuid and toRevision", () => {
  it("requires a uuid where the RPC needs one", () => {
    expect(toRequiredUuid("0B6E3A64-6C4E-4C5D-9E55-7F1A2B3C4D5E")).toBe("0b6e3a64-6c4e-4c5d-9e55-7f1a2b3c4d5e");
    expect(engineErrorOf(() => toRequiredUuid(""))).toMatchObject({ reason: "UUID_REQUIRED", field: "uuid" });
    expect(engineErrorOf(() => toRequiredUuid("nope"))).toMatchObject({ reason: "UUID_INVALID", field: "uuid" });
  });

  it("takes revisions up to 2^53 - 1", () => {
    expect(toRevision(BigInt(Number.MAX_SAFE_INTEGER))).toBe(Number.MAX_SAFE_INTEGER);
    const error = engineErrorOf(() => toRevision(BigInt(Number.MAX_SAFE_INTEGER) + 1n));
    expect(error).toMatchObject({
      kind: "invalid-argument",
      reason: "AFTER_REVISION_INVALID",
      field: "after_revision",
    });
  });
});

describe("toRpcError", () => {
  const cases: Array<[EngineErrorKind, grpc.status]> = [
    ["invalid-argument", grpc.status.INVALID_ARGUMENT],
    ["not-found", grpc.status.NOT_FOUND],
    ["already-exists", grpc.status.ALREADY_EXISTS],
    ["failed-precondition", grpc.status.FAILED_PRECONDITION],
    ["permission-denied", grpc.status.PERMISSION_DENIED],
    ["out-of-range", grpc.status.OUT_OF_RANGE],
    ["resource-exhausted", grpc.status.RESOURCE_EXHAUSTED],
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

describe("rich error details", () => {
  it("sends INVALID_ARGUMENT with an ErrorInfo and a BadRequest field violation", () => {
    const failure = toRpcError(
      new EngineError("invalid-argument", "NO_DEVICES", "devices: at least one device is required", "devices"),
    );
    const details = readErrorDetails(failure)!;
    expect(details.status).toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      message: "devices: at least one device is required",
    });
    expect(details.status.details.map((detail) => detail.typeUrl)).toEqual([
      "type.googleapis.com/google.rpc.ErrorInfo",
      "type.googleapis.com/google.rpc.BadRequest",
    ]);
    expect(details.errorInfo).toMatchObject({
      reason: "NO_DEVICES",
      domain: "vmabackup",
      metadata: { field: "devices" },
    });
    expect(details.badRequest?.fieldViolations).toEqual([
      expect.objectContaining({ field: "devices", description: "devices: at least one device is required" }),
    ]);
  });

  it("sends other refusals with an ErrorInfo only", () => {
    const failure = toRpcError(
      new EngineError("failed-precondition", "DEVICE_IN_USE", "devices[0].path: in use by job x", "devices[0].path"),
    );
    const details = readErrorDetails(failure)!;
    expect(details.status.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(details.errorInfo).toMatchObject({ reason: "DEVICE_IN_USE", metadata: { field: "devices[0].path" } });
    expect(details.badRequest).toBeUndefined();
    // Without a field, the metadata is empty rather than naming a wrong one.
    const fieldless = readErrorDetails(toRpcError(new EngineError("unavailable", "ENGINE_SHUT_DOWN", "stopping")))!;
    expect(fieldless.errorInfo).toMatchObject({ reason: "ENGINE_SHUT_DOWN", metadata: {} });
  });

  it("tells INTERNAL nothing but its reason", () => {
    const failure = toRpcError(new Error("EIO reading /secret/path"));
    const details = readErrorDetails(failure)!;
    expect(details.status.code).toBe(grpc.status.INTERNAL);
    expect(details.status.details).toHaveLength(1);
    expect(details.errorInfo).toMatchObject({ reason: "INTERNAL", domain: "vmabackup", metadata: {} });
    expect(JSON.stringify(details.status.message)).not.toContain("secret");
  });

  it("reads nothing from a failure without the trailer or with garbage in it", () => {
    expect(readErrorDetails(new Error("plain"))).toBeUndefined();
    expect(readErrorDetails({ metadata: new grpc.Metadata() })).toBeUndefined();
    const garbage = new grpc.Metadata();
    garbage.set(STATUS_DETAILS_KEY, Buffer.from([0xff, 0xff, 0xff]));
    expect(readErrorDetails({ metadata: garbage })).toBeUndefined();
  });
});
