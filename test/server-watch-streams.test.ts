// WatchStreams against a client that stops reading: the server must honour
// HTTP/2 back-pressure (stop pulling statuses), and must still let go when
// the client leaves or the server ends every stream, even while it waits
// for 'drain'. The status source here is fast and endless, so the HTTP/2
// windows fill within milliseconds.
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupService, BackupState, WatchBackupResponseSchema } from "../gen/vmabackup/v1/backup_pb.js";
import type { JobStatus } from "../src/engine/types.js";
import { addService } from "../src/server/grpc-adapter.js";
import { createClient } from "../src/client/grpc-client.js";
import type { ClientOf } from "../src/client/grpc-client.js";
import { readErrorDetails } from "../src/client/rpc-error-details.js";
import { StatusHub } from "../src/engine/status-hub.js";
import { toBackupStatus } from "../src/server/status-codec.js";
import { WatchStreams } from "../src/server/watch-streams.js";
import type { StatusSource } from "../src/server/watch-streams.js";
import { startTestServer } from "./helpers/test-server.js";

/**
 * An endless source of 4 KiB statuses, a new one every event-loop turn
 * (like a real source between changes), that counts what was pulled from it.
 */
class EndlessSource implements StatusSource {
  pulled = 0;
  closed = false;
  private available = true;
  private listener: (() => void) | undefined;

  get done(): boolean {
    return this.closed;
  }

  poll(): JobStatus | undefined {
    if (this.closed || !this.available) return undefined;
    this.available = false;
    setImmediate(() => {
      this.available = true;
      this.listener?.();
    });
    this.pulled += 1;
    return jobStatus("0b6e3a64-6c4e-4c5d-9e55-7f1a2b3c4d5e", this.pulled, "active", "x".repeat(4096));
  }

  onReadable(listener: () => void): void {
    this.listener = listener;
  }

  close(): void {
    this.closed = true;
  }
}

function jobStatus(uuid: string, revision: number, state: JobStatus["state"], errorMessage = ""): JobStatus {
  return {
    uuid,
    state,
    errorMessage,
    backupFile: "/b/a.vma",
    format: "vma",
    totalBytes: 1,
    transferredBytes: revision,
    zeroBytes: 0,
    startTime: new Date(),
    speedLimit: 0,
    devices: [],
    rate: 0,
    revision,
    updateTime: new Date(),
  };
}

/** The message of a status that the server's encoder below refuses. */
const UNENCODABLE = "unencodable";

/** Replaced where a test needs streams that endAll() has not ended. */
let watchStreams = new WatchStreams();
let source: EndlessSource;
/** What a WatchBackup call serves, by its request's uuid. */
let openSource: (uuid: string) => StatusSource = () => source;
let served: Promise<void> = Promise.resolve();
let server: grpc.Server;
let client: ClientOf<typeof BackupService>;

const unimplemented = (_call: unknown, callback: grpc.sendUnaryData<never>): void =>
  callback({ code: grpc.status.UNIMPLEMENTED });

beforeAll(async () => {
  server = new grpc.Server();
  addService(server, BackupService, {
    backup: unimplemented,
    queryBackup: unimplemented,
    cancelBackup: unimplemented,
    listBackups: unimplemented,
    setBackupSpeed: unimplemented,
    deleteBackup: unimplemented,
    watchBackup: (call) => {
      served = watchStreams.serve(
        call,
        () => ({ source: openSource(call.request.uuid), afterRevision: 0 }),
        (status) => {
          if (status.errorMessage === UNENCODABLE) throw new Error("this status cannot be encoded");
          return create(WatchBackupResponseSchema, { status: toBackupStatus(status) });
        },
        pino({ level: "silent" }),
      );
    },
  });
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

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Opens a watch, reads one message, then stops reading until the source stalls. */
async function openStalledWatch(signal?: AbortSignal): Promise<AsyncIterator<unknown>> {
  source = new EndlessSource();
  const iterator = client.watchBackup({ uuid: "" }, signal === undefined ? {} : { signal })[Symbol.asyncIterator]();
  await iterator.next();
  // Wait until the source stops being pulled: the server is waiting for
  // 'drain'. Give up after 3 s (the assertions then fail).
  const deadline = Date.now() + 3000;
  let before = -1;
  while (before !== source.pulled && Date.now() < deadline) {
    before = source.pulled;
    await pause(100);
  }
  return iterator;
}

describe("WatchStreams", () => {
  it("stops pulling statuses while the client does not read, and lets go when it leaves", async () => {
    const controller = new AbortController();
    const iterator = await openStalledWatch(controller.signal);
    // The flow-control windows hold a few MiB at most; far fewer than an
    // endless source would produce without back-pressure.
    expect(source.pulled).toBeLessThan(5000);
    expect(watchStreams.size).toBe(1);
    controller.abort();
    await served;
    expect(source.closed).toBe(true);
    expect(watchStreams.size).toBe(0);
    await iterator.return?.();
  });

  it("ends a stalled stream with UNAVAILABLE on endAll, after the client read what was sent", async () => {
    const iterator = await openStalledWatch();
    watchStreams.endAll();
    await served;
    expect(source.closed).toBe(true);
    expect(watchStreams.size).toBe(0);
    const pulled = source.pulled;
    let received = 1;
    let ended: unknown;
    try {
      for (;;) {
        const result = await iterator.next();
        if (result.done) break;
        received += 1;
      }
    } catch (error) {
      ended = error;
    }
    // Everything written was delivered, then a status that tells the
    // watcher to reconnect (retryable), not OK (which means "all done").
    expect(received).toBeGreaterThan(10);
    expect(received).toBeLessThanOrEqual(pulled);
    expect(ended).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect(readErrorDetails(ended)?.errorInfo).toMatchObject({ reason: "ENGINE_SHUT_DOWN", domain: "vmabackup" });
  });
});

describe("a status one stream cannot send", () => {
  it("ends that stream with INTERNAL; the publisher and the other streams carry on", async () => {
    watchStreams = new WatchStreams();
    const hub = new StatusHub(0);
    const [a, b] = ["6f0c1d2e-0000-4000-8000-00000000000a", "6f0c1d2e-0000-4000-8000-00000000000b"];
    openSource = (uuid) =>
      uuid === "" ? hub.subscribe(undefined, []) : hub.subscribe(uuid, [jobStatus(uuid, 1, "active")]);
    try {
      const one = client.watchBackup({ uuid: a })[Symbol.asyncIterator]();
      expect((await one.next()).value).toMatchObject({ status: { uuid: a, revision: 1n } });
      const everyJob = (async () => {
        for await (const _message of client.watchBackup({ uuid: "" })) {
          // nothing reaches this watcher: the one status it gets cannot be sent
        }
      })();
      while (hub.subscriberCount < 2) await pause(5);
      // The hub calls the streams back from within publishing: a failure there stays in its stream.
      expect(() => hub.publishState(jobStatus(b, 2, "active", UNENCODABLE))).not.toThrow();
      await expect(everyJob).rejects.toMatchObject({ code: grpc.status.INTERNAL });
      hub.publishState(jobStatus(a, 3, "done"));
      expect((await one.next()).value).toMatchObject({ status: { uuid: a, state: BackupState.DONE } });
      expect((await one.next()).done).toBe(true);
      expect(hub.subscriberCount).toBe(0);
      expect(watchStreams.size).toBe(0);
    } finally {
      openSource = () => source;
    }
  });
});

describe("a server shutting down", () => {
  it("ends all-jobs watchers with UNAVAILABLE, after the running job's CANCELLED", async () => {
    const own = await startTestServer();
    try {
      const source = await own.writeSource("slow.raw", Buffer.alloc(4 * 1024 * 1024, 1));
      const job = await own.client.backup({
        backupFile: "slow.vma",
        devices: [{ name: "drive-scsi0", path: source }],
        speedLimit: 256n * 1024n,
      });
      const states: BackupState[] = [];
      const watching = (async () => {
        for await (const message of own.client.watchBackup({ uuid: "" })) {
          states.push(message.status!.state);
          if (states.length === 1) void own.stop();
        }
      })();
      await expect(watching).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      expect(states).toEqual([BackupState.ACTIVE, BackupState.CANCELLED]);
      expect(job.status?.state).toBe(BackupState.ACTIVE);
    } finally {
      await own.stop();
    }
  });
});
