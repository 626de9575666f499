// The kinds of sources through gRPC: a device gives exactly one of path,
// image, nbd and qemu; each kind's fields are checked (INVALID_ARGUMENT),
// the server's settings decide which kinds and places are allowed
// (PERMISSION_DENIED naming the setting), all before anything is created;
// and a status tells each device's source kind and location.
import { readdir } from "node:fs/promises";
import * as path from "node:path";
import { status as GrpcStatus } from "@grpc/grpc-js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupState, ImageFormat, SourceKind } from "../gen/vmabackup/v1/backup_pb.js";
import type { DeviceSchema } from "../gen/vmabackup/v1/backup_pb.js";
import { expectRefusal } from "./helpers/rpc-failure.js";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

type Device = MessageInitShape<typeof DeviceSchema>;

/** Lexical settings only: nothing needs to exist there. */
const NBD_SOCKET_DIR = "/run/vmabackup-test-nbd";
const QMP_ROOT = "/run/vmabackup-test-qmp";

function backup(server: TestServer, device: Device): Promise<unknown> {
  return server.client.backup({ backupFile: "x.vma", devices: [{ name: "drive-scsi0", ...device }] });
}

describe("a server with the default settings", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer();
  });

  afterAll(async () => {
    expect(await readdir(server.backupDir)).toEqual([]);
    await server.stop();
  });

  it("refuses a device with no source, naming the four kinds", async () => {
    const error = await expectRefusal(
      backup(server, {}),
      GrpcStatus.INVALID_ARGUMENT,
      "DEVICE_PATH_INVALID",
      "devices[0].path",
    );
    expect(error.details).toContain("give a path, image, nbd or qemu source");
  });

  it("refuses a device with both a path and another source", async () => {
    const error = await expectRefusal(
      backup(server, { path: "/x.raw", source: { case: "nbd", value: { uri: "nbd://127.0.0.1/e" } } }),
      GrpcStatus.INVALID_ARGUMENT,
      "DEVICE_SOURCE_AMBIGUOUS",
      "devices[0]",
    );
    expect(error.details).toBe("devices[0]: gives both path and nbd; give exactly one of path, image, nbd, qemu");
  });

  it("refuses an image without a format, or with a format it does not know", async () => {
    const image = (format: number): Device => ({
      source: { case: "image", value: { path: path.join(server.sourceDir, "a.qcow2"), format } },
    });
    const missing = await expectRefusal(
      backup(server, image(ImageFormat.UNSPECIFIED)),
      GrpcStatus.INVALID_ARGUMENT,
      "IMAGE_FORMAT_MISSING",
      "devices[0].image.format",
    );
    expect(missing.details).toContain("raw, qcow2, vmdk, vdi, vhdx, qed");
    await expectRefusal(
      backup(server, image(99)),
      GrpcStatus.INVALID_ARGUMENT,
      "IMAGE_FORMAT_UNKNOWN",
      "devices[0].image.format",
    );
  });

  it("refuses an image outside the source roots before opening anything", async () => {
    await expectRefusal(
      backup(server, {
        source: { case: "image", value: { path: path.join(server.outsideDir, "a.qcow2"), format: ImageFormat.QCOW2 } },
      }),
      GrpcStatus.PERMISSION_DENIED,
      "PATH_NOT_ALLOWED",
      "devices[0].image.path",
    );
  });

  it("refuses an image source as not wired yet (until its opener is merged)", async () => {
    // INTEGRATOR: once src/engine/source-openers.ts wires the image opener, this becomes a real backup.
    const error = await expectRefusal(
      backup(server, {
        source: { case: "image", value: { path: path.join(server.sourceDir, "a.qcow2"), format: ImageFormat.QCOW2 } },
      }),
      GrpcStatus.FAILED_PRECONDITION,
      "SOURCE_KIND_NOT_WIRED",
      "devices[0].image",
    );
    expect(error.details).toContain("not wired yet");
  });

  it.each([
    ["", "is empty"],
    ["http://127.0.0.1/e", 'has scheme "http", not nbd or nbd+unix'],
    ["nbd+unix:///e", "has no socket= parameter"],
    ["nbd+unix:///e?socket=run/a.sock", "not an absolute path"],
    ["nbd+unix://host/e?socket=/run/a.sock", "names a host"],
    ["nbd://user:pw@127.0.0.1/e", "user name or password"],
    ["not a uri", "is not a URI"],
  ])("refuses the NBD URI %j: %s", async (uri, problem) => {
    const error = await expectRefusal(
      backup(server, { source: { case: "nbd", value: { uri } } }),
      GrpcStatus.INVALID_ARGUMENT,
      "NBD_URI_INVALID",
      "devices[0].nbd.uri",
    );
    expect(error.details).toContain(problem);
  });

  it("refuses a valid nbd source: nbd sources are off, and says which setting turns them on", async () => {
    const error = await expectRefusal(
      backup(server, { source: { case: "nbd", value: { uri: "nbd://127.0.0.1:10809/e" } } }),
      GrpcStatus.PERMISSION_DENIED,
      "NBD_SOURCES_DISABLED",
      "devices[0].nbd.uri",
    );
    expect(error.details).toContain("--nbd-allow");
  });

  it("refuses qemu sources with a bad socket or drive, and valid ones because they are off", async () => {
    const qemu = (qmpSocket: string, drive: string): Device => ({
      source: { case: "qemu", value: { qmpSocket, drive } },
    });
    await expectRefusal(
      backup(server, qemu("run/q.qmp", "drive-scsi0")),
      GrpcStatus.INVALID_ARGUMENT,
      "QMP_SOCKET_INVALID",
      "devices[0].qemu.qmp_socket",
    );
    await expectRefusal(
      backup(server, qemu(`${QMP_ROOT}/q.qmp`, "")),
      GrpcStatus.INVALID_ARGUMENT,
      "DRIVE_NAME_INVALID",
      "devices[0].qemu.drive",
    );
    const off = await expectRefusal(
      backup(server, qemu(`${QMP_ROOT}/q.qmp`, "drive-scsi0")),
      GrpcStatus.PERMISSION_DENIED,
      "QEMU_SOURCES_DISABLED",
      "devices[0].qemu.qmp_socket",
    );
    expect(off.details).toContain("--qmp-root");
  });

  it("reports a path device's source kind and location in its status", async () => {
    const source = await server.writeSource("a.raw", Buffer.alloc(128 * 1024, 7));
    const response = await server.client.backup({
      backupFile: "sourced.vma",
      devices: [{ name: "drive-scsi0", path: source }],
    });
    const uuid = response.status?.uuid ?? "";
    expect(response.status?.devices[0]).toMatchObject({
      sourceKind: SourceKind.PATH,
      source,
      scratchBytes: 0n,
    });
    let state = response.status?.state;
    for (let tries = 0; state === BackupState.ACTIVE && tries < 200; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 25));
      state = (await server.client.queryBackup({ uuid })).status?.state;
    }
    expect(state).toBe(BackupState.DONE);
    const listed = await server.client.listBackups({});
    expect(listed.statuses.find((status) => status.uuid === uuid)?.devices[0]).toMatchObject({
      sourceKind: SourceKind.PATH,
      source,
    });
    await server.client.deleteBackup({ uuid, deleteArchive: true });
  });
});

describe("a server that allows some NBD targets and QMP sockets", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer({
      nbdAllow: [NBD_SOCKET_DIR, "127.0.0.1:10809", "nbd.example"],
      qmpRoots: [QMP_ROOT],
    });
  });

  afterAll(async () => {
    expect(await readdir(server.backupDir)).toEqual([]);
    await server.stop();
  });

  it.each([
    ["nbd://10.0.0.1:10809/e", "10.0.0.1:10809"],
    ["nbd://127.0.0.1:10810/e", "127.0.0.1:10810"],
    ["nbd+unix:///e?socket=/run/other/a.sock", '"/run/other/a.sock"'],
    [`nbd+unix:///e?socket=${NBD_SOCKET_DIR}/../other/a.sock`, '"/run/other/a.sock"'],
  ])("refuses %j, naming the target and the setting", async (uri, target) => {
    const error = await expectRefusal(
      backup(server, { source: { case: "nbd", value: { uri } } }),
      GrpcStatus.PERMISSION_DENIED,
      "NBD_TARGET_NOT_ALLOWED",
      "devices[0].nbd.uri",
    );
    expect(error.details).toContain(target);
    expect(error.details).toContain("--nbd-allow");
  });

  it.each([
    "nbd://127.0.0.1:10809/e",
    "nbd://127.0.0.1/e", // the default port
    "nbd://NBD.example:12345/e", // a bare host allows any port
    `nbd+unix:///e?socket=${NBD_SOCKET_DIR}/vm/a.sock`,
  ])("lets %j through to the opener", async (uri) => {
    await expectRefusal(
      backup(server, { source: { case: "nbd", value: { uri } } }),
      GrpcStatus.FAILED_PRECONDITION,
      "SOURCE_KIND_NOT_WIRED",
      "devices[0].nbd",
    );
  });

  it("refuses a QMP socket outside --qmp-root, and lets one inside through to the opener", async () => {
    for (const qmpSocket of ["/run/other/q.qmp", `${QMP_ROOT}/../other/q.qmp`]) {
      const error = await expectRefusal(
        backup(server, { source: { case: "qemu", value: { qmpSocket, drive: "drive-scsi0" } } }),
        GrpcStatus.PERMISSION_DENIED,
        "QMP_SOCKET_NOT_ALLOWED",
        "devices[0].qemu.qmp_socket",
      );
      expect(error.details).toContain("--qmp-root");
    }
    await expectRefusal(
      backup(server, { source: { case: "qemu", value: { qmpSocket: `${QMP_ROOT}/100.qmp`, drive: "drive-scsi0" } } }),
      GrpcStatus.FAILED_PRECONDITION,
      "SOURCE_KIND_NOT_WIRED",
      "devices[0].qemu",
    );
  });
});
