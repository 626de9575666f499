// Every refusal of Backup, through gRPC: the status code, a message that
// names the offending field, the google.rpc.Status details (ErrorInfo with
// the stable reason and the field, BadRequest for INVALID_ARGUMENT), and
// nothing left behind in the backup dir.
import { mkdir, readdir, symlink, writeFile } from "node:fs/promises";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { BackupState } from "../gen/vmabackup/v1/backup_pb.js";
import type { BackupFormat } from "../gen/vmabackup/v1/backup_pb.js";
import { readErrorDetails } from "../src/client/rpc-error-details.js";
import { failureOf } from "./helpers/rpc-failure.js";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

/** The BackupRequest fields these tests vary. */
interface Request {
  backupFile: string;
  format?: BackupFormat;
  devices: Array<{ name: string; path: string }>;
  configs: Array<{ name: string; data: Uint8Array }>;
  speedLimit?: bigint;
}

const MiB = 1024 * 1024;

let server: TestServer;
/** A valid 1 MiB source inside the source root. */
let goodSource: string;
/** A file outside every source root. */
let outsideSource: string;

beforeAll(async () => {
  server = await startTestServer();
  goodSource = await server.writeSource("good.raw", Buffer.alloc(MiB, 1));
  await server.writeSource("empty.raw", Buffer.alloc(0));
  await mkdir(path.join(server.sourceDir, "a-directory"));
  outsideSource = path.join(server.rootDir, "outside.raw");
  await writeFile(outsideSource, Buffer.alloc(MiB, 2));
  await symlink(outsideSource, path.join(server.sourceDir, "escape.raw"));
  await writeFile(path.join(server.backupDir, "existing.vma"), "not overwritten");
});

afterEach(async () => {
  await server.client.cancelBackup({ uuid: "" });
});

afterAll(async () => {
  await server.stop();
});

/** A request that would succeed, with `change` applied. */
function request(change: Partial<Request> = {}): Request {
  return {
    backupFile: "refused.vma",
    devices: [{ name: "drive-scsi0", path: goodSource }],
    configs: [{ name: "qemu-server.conf", data: new TextEncoder().encode("memory: 512\n") }],
    ...change,
  };
}

function devices(count: number): Request["devices"] {
  return Array.from({ length: count }, (_, index) => ({ name: `drive-scsi${index}`, path: goodSource }));
}

const names = (...list: string[]): Request["devices"] => list.map((name) => ({ name, path: goodSource }));

const cases: Array<[string, () => Request, grpc.status, RegExp]> = [
  ["no devices", () => request({ devices: [] }), grpc.status.INVALID_ARGUMENT, /devices/],
  ["an empty device name", () => request({ devices: names("") }), grpc.status.INVALID_ARGUMENT, /devices\[0\]\.name/],
  [
    'a device name with "/"',
    () => request({ devices: names("a/b") }),
    grpc.status.INVALID_ARGUMENT,
    /devices\[0\]\.name/,
  ],
  [
    "a device name with a space",
    () => request({ devices: names("a b") }),
    grpc.status.INVALID_ARGUMENT,
    /devices\[0\]\.name/,
  ],
  [
    "a device name with NUL",
    () => request({ devices: names("a\0b") }),
    grpc.status.INVALID_ARGUMENT,
    /devices\[0\]\.name/,
  ],
  [
    'the reserved name "vmstate"',
    () => request({ devices: names("vmstate") }),
    grpc.status.INVALID_ARGUMENT,
    /devices\[0\]\.name/,
  ],
  [
    "a 128-byte device name",
    () => request({ devices: names("d".repeat(128)) }),
    grpc.status.INVALID_ARGUMENT,
    /devices\[0\]\.name/,
  ],
  [
    "duplicate device names",
    () => request({ devices: names("drive-scsi0", "drive-scsi0") }),
    grpc.status.INVALID_ARGUMENT,
    /devices\[1\]\.name/,
  ],
  ["255 devices", () => request({ devices: devices(255) }), grpc.status.INVALID_ARGUMENT, /devices/],
  [
    "257 configs",
    () => request({ configs: Array.from({ length: 257 }, (_, i) => ({ name: `c${i}.conf`, data: Uint8Array.of(1) })) }),
    grpc.status.INVALID_ARGUMENT,
    /configs/,
  ],
  [
    "a config over 65535 bytes",
    () => request({ configs: [{ name: "big.conf", data: new Uint8Array(65536) }] }),
    grpc.status.INVALID_ARGUMENT,
    /configs\[0\]\.data/,
  ],
  [
    "configs that overflow the VMA header",
    () =>
      request({ configs: Array.from({ length: 8 }, (_, i) => ({ name: `c${i}.conf`, data: new Uint8Array(65535) })) }),
    grpc.status.INVALID_ARGUMENT,
    /configs/,
  ],
  [
    "a missing source",
    () => request({ devices: [{ name: "d", path: path.join(server.sourceDir, "missing.raw") }] }),
    grpc.status.NOT_FOUND,
    /devices\[0\]\.path/,
  ],
  [
    "a directory as source",
    () => request({ devices: [{ name: "d", path: path.join(server.sourceDir, "a-directory") }] }),
    grpc.status.FAILED_PRECONDITION,
    /devices\[0\]\.path/,
  ],
  [
    "an empty source",
    () => request({ devices: [{ name: "d", path: path.join(server.sourceDir, "empty.raw") }] }),
    grpc.status.FAILED_PRECONDITION,
    /devices\[0\]\.path/,
  ],
  [
    'a source outside the roots through ".."',
    () => request({ devices: [{ name: "d", path: path.join(server.sourceDir, "..", "outside.raw") }] }),
    grpc.status.PERMISSION_DENIED,
    /devices\[0\]\.path/,
  ],
  [
    "a source outside the roots through a symlink",
    () => request({ devices: [{ name: "d", path: path.join(server.sourceDir, "escape.raw") }] }),
    grpc.status.PERMISSION_DENIED,
    /devices\[0\]\.path/,
  ],
  [
    "a backup_file outside the backup dir (absolute)",
    () => request({ backupFile: path.join(server.rootDir, "elsewhere.vma") }),
    grpc.status.PERMISSION_DENIED,
    /backup_file/,
  ],
  [
    'a backup_file outside the backup dir (through "..")',
    () => request({ backupFile: "../elsewhere.vma" }),
    grpc.status.PERMISSION_DENIED,
    /backup_file/,
  ],
  [
    'a backup_file not ending in ".vma"',
    () => request({ backupFile: "vm-100.tar" }),
    grpc.status.INVALID_ARGUMENT,
    /backup_file/,
  ],
  ["an existing backup_file", () => request({ backupFile: "existing.vma" }), grpc.status.ALREADY_EXISTS, /backup_file/],
  [
    "a speed limit beyond 2^53 - 1",
    () => request({ speedLimit: BigInt(Number.MAX_SAFE_INTEGER) + 1n }),
    grpc.status.INVALID_ARGUMENT,
    /speed_limit/,
  ],
  ["an unknown format", () => request({ format: 9 as BackupFormat }), grpc.status.INVALID_ARGUMENT, /format/],
];

/** The ErrorInfo reason and field each case above must carry. */
const REASONS: Readonly<Record<string, [string, string]>> = {
  "no devices": ["NO_DEVICES", "devices"],
  "an empty device name": ["DEVICE_NAME_INVALID", "devices[0].name"],
  'a device name with "/"': ["DEVICE_NAME_INVALID", "devices[0].name"],
  "a device name with a space": ["DEVICE_NAME_INVALID", "devices[0].name"],
  "a device name with NUL": ["DEVICE_NAME_INVALID", "devices[0].name"],
  'the reserved name "vmstate"': ["DEVICE_NAME_RESERVED", "devices[0].name"],
  "a 128-byte device name": ["DEVICE_NAME_TOO_LONG", "devices[0].name"],
  "duplicate device names": ["DEVICE_NAME_DUPLICATE", "devices[1].name"],
  "255 devices": ["TOO_MANY_DEVICES", "devices"],
  "257 configs": ["TOO_MANY_CONFIGS", "configs"],
  "a config over 65535 bytes": ["CONFIG_TOO_LARGE", "configs[0].data"],
  "configs that overflow the VMA header": ["ARCHIVE_LIMIT_EXCEEDED", "configs"],
  "a missing source": ["SOURCE_NOT_FOUND", "devices[0].path"],
  "a directory as source": ["SOURCE_TYPE_UNSUPPORTED", "devices[0].path"],
  "an empty source": ["SOURCE_EMPTY", "devices[0].path"],
  'a source outside the roots through ".."': ["PATH_NOT_ALLOWED", "devices[0].path"],
  "a source outside the roots through a symlink": ["PATH_NOT_ALLOWED", "devices[0].path"],
  "a backup_file outside the backup dir (absolute)": ["PATH_NOT_ALLOWED", "backup_file"],
  'a backup_file outside the backup dir (through "..")': ["PATH_NOT_ALLOWED", "backup_file"],
  'a backup_file not ending in ".vma"': ["BACKUP_FILE_BAD_SUFFIX", "backup_file"],
  "an existing backup_file": ["BACKUP_FILE_EXISTS", "backup_file"],
  "a speed limit beyond 2^53 - 1": ["SPEED_LIMIT_INVALID", "speed_limit"],
  "an unknown format": ["FORMAT_UNSUPPORTED", "format"],
};

describe("Backup refuses", () => {
  it("has a reason for every case", () => {
    expect(Object.keys(REASONS).sort()).toEqual(cases.map(([label]) => label).sort());
  });

  it.each(cases)("%s", async (label, build, code, field) => {
    const before = (await readdir(server.backupDir)).sort();
    const failure = await failureOf(server.client.backup(build()));
    expect(failure).toMatchObject({ code, details: expect.stringMatching(field) });
    const [reason, fieldPath] = REASONS[label]!;
    const details = readErrorDetails(failure);
    expect(details?.status).toMatchObject({ code, message: failure.details });
    expect(details?.errorInfo).toMatchObject({ reason, domain: "vmabackup", metadata: { field: fieldPath } });
    if (code === grpc.status.INVALID_ARGUMENT) {
      expect(details?.badRequest?.fieldViolations).toEqual([
        expect.objectContaining({ field: fieldPath, description: failure.details }),
      ]);
    } else {
      expect(details?.badRequest).toBeUndefined();
    }
    // Refused before anything was created.
    expect((await readdir(server.backupDir)).sort()).toEqual(before);
    expect((await server.client.cancelBackup({ uuid: "" })).statuses).toEqual([]);
  });
});

describe("a request with several problems", () => {
  it("reports every field violation in BadRequest, and all of them in the message", async () => {
    const failure = await failureOf(
      server.client.backup({
        backupFile: "no-suffix.tar",
        devices: [
          { name: "", path: goodSource },
          { name: "drive-scsi1", path: "" },
        ],
        configs: [
          { name: "a.conf", data: Uint8Array.of(1) },
          { name: "a.conf", data: Uint8Array.of(2) },
        ],
      }),
    );
    expect(failure.code).toBe(grpc.status.INVALID_ARGUMENT);
    const details = readErrorDetails(failure);
    const fields = ["devices[0].name", "devices[1].path", "configs[1].name", "backup_file"];
    expect(details?.badRequest?.fieldViolations.map((violation) => violation.field)).toEqual(fields);
    for (const violation of details!.badRequest!.fieldViolations) {
      expect(violation.description.startsWith(`${violation.field}: `)).toBe(true);
      expect(failure.details).toContain(violation.description);
    }
    // ErrorInfo names the first problem.
    expect(details?.errorInfo).toMatchObject({ reason: "DEVICE_NAME_INVALID", metadata: { field: "devices[0].name" } });
  });

  it("sends at most 10 violations (the trailer stays small) and says how many more there were", async () => {
    const failure = await failureOf(server.client.backup(request({ devices: names(...Array<string>(12).fill("")) })));
    const violations = readErrorDetails(failure)?.badRequest?.fieldViolations ?? [];
    expect(violations.map((violation) => violation.field)).toEqual(
      Array.from({ length: 10 }, (_, index) => `devices[${index}].name`),
    );
    expect(failure.details).toMatch(/; and 2 more problems$/);
  });
});

describe("device locks", () => {
  it("refuses a device another active job is backing up, and runs jobs with disjoint devices at once", async () => {
    const other = await server.writeSource("other.raw", Buffer.alloc(MiB, 3));
    const slow = BigInt(256 * 1024);
    const first = await server.client.backup(request({ backupFile: "lock-1.vma", speedLimit: slow }));
    expect(first.status?.state).toBe(BackupState.ACTIVE);

    // The same source under another device name and archive is still busy.
    const busy = await failureOf(
      server.client.backup(request({ backupFile: "lock-2.vma", devices: [{ name: "other-name", path: goodSource }] })),
    );
    expect(busy).toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
      details: expect.stringMatching(/devices\[0\]/),
    });
    expect(readErrorDetails(busy)?.errorInfo).toMatchObject({
      reason: "DEVICE_IN_USE",
      domain: "vmabackup",
      // The job in the way, so that a client can watch or cancel it.
      metadata: { field: "devices[0].path", job_uuid: first.status!.uuid },
    });
    // The same for the archive another job is writing.
    const archiveBusy = await failureOf(
      server.client.backup(request({ backupFile: "lock-1.vma", devices: [{ name: "d", path: other }] })),
    );
    expect(readErrorDetails(archiveBusy)?.errorInfo).toMatchObject({
      reason: "BACKUP_FILE_IN_USE",
      metadata: { field: "backup_file", job_uuid: first.status!.uuid },
    });

    const second = await server.client.backup(
      request({ backupFile: "lock-3.vma", devices: [{ name: "drive-scsi1", path: other }], speedLimit: slow }),
    );
    expect(second.status?.state).toBe(BackupState.ACTIVE);
    const active = await server.client.cancelBackup({ uuid: "" });
    expect(active.statuses.map((status) => status.uuid).sort()).toEqual(
      [first.status!.uuid, second.status!.uuid].sort(),
    );
  });
});
