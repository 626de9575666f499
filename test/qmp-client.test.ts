// The QMP client against a real qemu-storage-daemon, and against small unix
// socket servers for what real QEMU cannot be made to do on demand (say
// nothing, answer garbage, drop a pending command).

import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { QemuSourceError } from "../src/sources/qemu/errors.js";
import { QmpClient, type QmpEvent } from "../src/sources/qemu/qmp-client.js";
import { makeDisks, type QemuProcess, startStorageDaemon } from "./helpers/qemu-guest.js";

const dir = mkdtempSync(join(tmpdir(), "vmab-qmp-"));
let qemu: QemuProcess;
const servers: Server[] = [];

beforeAll(async () => {
  qemu = await startStorageDaemon(dir, makeDisks(dir, 1));
});

afterAll(async () => {
  await qemu?.stop();
  for (const server of servers) server.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A unix socket server that runs `onConnection` for each client. */
async function fakeServer(name: string, onConnection: (socket: Socket) => void): Promise<string> {
  const path = join(dir, name);
  const server = createServer(onConnection);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return path;
}

const GREETING = `${JSON.stringify({ QMP: { version: { qemu: { major: 9, minor: 0, micro: 0 }, package: "" }, capabilities: [] } })}\r\n`;

/** Greets and acknowledges qmp_capabilities, then hands each further command to `onCommand`. */
function greetThen(onCommand: (socket: Socket, command: { execute: string; id: string }) => void) {
  return (socket: Socket): void => {
    socket.write(GREETING);
    let buffered = "";
    socket.on("data", (chunk) => {
      buffered += chunk.toString();
      let newline = buffered.indexOf("\n");
      while (newline >= 0) {
        const command = JSON.parse(buffered.slice(0, newline)) as { execute: string; id: string };
        buffered = buffered.slice(newline + 1);
        if (command.execute === "qmp_capabilities")
          socket.write(`${JSON.stringify({ return: {}, id: command.id })}\r\n`);
        else onCommand(socket, command);
        newline = buffered.indexOf("\n");
      }
    });
  };
}

async function rejection(promise: Promise<unknown>): Promise<QemuSourceError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(QemuSourceError);
  return error as QemuSourceError;
}

describe("QmpClient with a real QEMU", () => {
  it("negotiates capabilities and runs commands, with QEMU's version from the greeting", async () => {
    const client = await QmpClient.connect(qemu.qmpSocket);
    try {
      expect(client.version.major).toBeGreaterThanOrEqual(7);
      const version = await client.execute<{ qemu: { major: number } }>("query-version");
      expect(version.qemu.major).toBe(client.version.major);
      const nodes = await client.execute<{ "node-name": string }[]>("query-named-block-nodes", { flat: true });
      expect(nodes.map((node) => node["node-name"]).sort()).toEqual(["file0", "live0"]);
    } finally {
      client.close();
    }
  });

  it("rejects a refused command with QMP's class and desc, and keeps working", async () => {
    const client = await QmpClient.connect(qemu.qmpSocket);
    try {
      const refused = await rejection(client.execute("blockdev-del", { "node-name": "no-such-node" }));
      expect(refused.reason).toBe("QMP_COMMAND_FAILED");
      expect(refused.qmpClass).toBe("GenericError");
      expect(refused.qmpDesc).toContain("no-such-node");
      const unknown = await rejection(client.execute("no-such-command"));
      expect(unknown.qmpClass).toBe("CommandNotFound");
      await expect(client.execute("query-block-exports")).resolves.toEqual([]);
    } finally {
      client.close();
    }
  });

  it("delivers events to listeners apart from the replies", async () => {
    const client = await QmpClient.connect(qemu.qmpSocket);
    const events: QmpEvent[] = [];
    client.on("event", (event) => events.push(event));
    try {
      await client.execute("nbd-server-start", {
        addr: { type: "unix", data: { path: join(dir, "events-nbd.sock") } },
      });
      await client.execute("block-export-add", { type: "nbd", id: "ev", "node-name": "live0", writable: false });
      const deleted = client.waitForEvent("BLOCK_EXPORT_DELETED", (event) => event.data.id === "ev", 5_000);
      await expect(client.execute("block-export-del", { id: "ev" })).resolves.toEqual({});
      await deleted;
      expect(events.map((event) => event.event)).toContain("BLOCK_EXPORT_DELETED");
      expect(events.every((event) => event.timestamp.seconds > 0)).toBe(true);
    } finally {
      await client.execute("nbd-server-stop").catch(() => undefined);
      client.close();
    }
  });

  it("reports a monitor held by another client as unreachable after the connect timeout", async () => {
    const holder = await QmpClient.connect(qemu.qmpSocket);
    try {
      const started = Date.now();
      const error = await rejection(QmpClient.connect(qemu.qmpSocket, { connectTimeoutMs: 300 }));
      expect(error.reason).toBe("QMP_UNREACHABLE");
      expect(error.message).toMatch(/no QMP greeting .* another client may hold the monitor/);
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      holder.close();
    }
  });

  it("emits 'close' with an error and rejects pending commands when QEMU dies", async () => {
    const doomedDir = mkdtempSync(join(dir, "doomed-"));
    const doomed = await startStorageDaemon(doomedDir, makeDisks(doomedDir, 1));
    const client = await QmpClient.connect(doomed.qmpSocket);
    const closed = new Promise<QemuSourceError | undefined>((resolve) => client.once("close", resolve));
    doomed.child.kill("SIGKILL");
    const error = await closed;
    expect(error?.reason).toBe("QMP_CLOSED");
    expect(client.closed).toBe(true);
    const late = await rejection(client.execute("query-version"));
    expect(late.reason).toBe("QMP_CLOSED");
    await doomed.stop();
  });
});

describe("QmpClient against misbehaving sockets", () => {
  it("refuses a socket that does not exist as QMP_UNREACHABLE", async () => {
    const error = await rejection(QmpClient.connect(join(dir, "missing.sock")));
    expect(error.reason).toBe("QMP_UNREACHABLE");
    expect(error.message).toContain("missing.sock");
  });

  it("refuses a server that is not QMP as QMP_PROTOCOL_ERROR", async () => {
    const path = await fakeServer("http.sock", (socket) => socket.write("HTTP/1.1 400 Bad Request\r\n\r\n"));
    const error = await rejection(QmpClient.connect(path));
    expect(error.reason).toBe("QMP_PROTOCOL_ERROR");
  });

  it("times out a command that gets no reply, and drops the late reply", async () => {
    let pendingId = "";
    let socketOfServer: Socket | undefined;
    const path = await fakeServer(
      "silent.sock",
      greetThen((socket, command) => {
        if (command.execute === "slow") {
          pendingId = command.id;
          socketOfServer = socket;
        } else socket.write(`${JSON.stringify({ return: { ok: command.execute }, id: command.id })}\r\n`);
      }),
    );
    const client = await QmpClient.connect(path, { commandTimeoutMs: 200 });
    try {
      const error = await rejection(client.execute("slow"));
      expect(error.reason).toBe("QMP_TIMEOUT");
      expect(error.message).toContain("slow");
      socketOfServer?.write(`${JSON.stringify({ return: "late", id: pendingId })}\r\n`);
      await expect(client.execute("next")).resolves.toEqual({ ok: "next" });
    } finally {
      client.close();
    }
  });

  it("rejects a pending command with QMP_CLOSED when the connection drops", async () => {
    const path = await fakeServer(
      "dropping.sock",
      greetThen((socket) => socket.destroy()),
    );
    const client = await QmpClient.connect(path);
    const closed = new Promise<QemuSourceError | undefined>((resolve) => client.once("close", resolve));
    const error = await rejection(client.execute("query-status"));
    expect(error.reason).toBe("QMP_CLOSED");
    expect((await closed)?.reason).toBe("QMP_CLOSED");
  });

  it("treats a reply that is not JSON as a protocol error and closes", async () => {
    const path = await fakeServer(
      "garbage.sock",
      greetThen((socket) => socket.write("{not json\r\n")),
    );
    const client = await QmpClient.connect(path);
    const error = await rejection(client.execute("query-status"));
    expect(error.reason).toBe("QMP_PROTOCOL_ERROR");
    expect(client.closed).toBe(true);
  });
});
