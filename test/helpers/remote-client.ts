// A vmabackup client in its own process, for tests that cut a client off
// the hard way: SIGKILL, so its TCP connections die without a goodbye (no
// RST_STREAM, no GOAWAY). startRemoteClient() runs this file; the process
// reports what happens as JSON lines on stdout.
//
//   backup: sends one Backup request and reports the answer.
//   watch:  opens `perJob` WatchBackup streams on each uuid and reports
//           "ready" once every stream has had its first message.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { BackupService } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupRequestSchema } from "../../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../../src/client/grpc-client.js";

export type RemoteCommand =
  | {
      readonly mode: "backup";
      readonly address: string;
      readonly request: MessageInitShape<typeof BackupRequestSchema>;
    }
  | { readonly mode: "watch"; readonly address: string; readonly uuids: readonly string[]; readonly perJob: number };

export interface RemoteEvent {
  readonly event: "sending" | "response" | "error" | "ready";
  readonly [key: string]: unknown;
}

export interface RemoteClient {
  readonly child: ChildProcess;
  /** Resolves with the first event `match` accepts; rejects if the process exits first. */
  waitFor(match: (event: RemoteEvent) => boolean): Promise<RemoteEvent>;
  /** SIGKILL, and wait for the process to be gone. */
  kill(): Promise<void>;
}

const SELF = fileURLToPath(import.meta.url);

export function startRemoteClient(command: RemoteCommand): RemoteClient {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      SELF,
      JSON.stringify(command, (_key, value: unknown) => (typeof value === "bigint" ? value.toString() : value)),
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const events: RemoteEvent[] = [];
  const waiters = new Set<{ match: (event: RemoteEvent) => boolean; resolve: (event: RemoteEvent) => void }>();
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  createInterface({ input: child.stdout! }).on("line", (line) => {
    const event = JSON.parse(line) as RemoteEvent;
    events.push(event);
    for (const waiter of [...waiters]) {
      if (waiter.match(event)) {
        waiters.delete(waiter);
        waiter.resolve(event);
      }
    }
  });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  return {
    child,
    waitFor(match) {
      const found = events.find(match);
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        waiters.add({ match, resolve });
        void exited.then(() => reject(new Error(`remote client exited; stderr: ${stderr}`)));
      });
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

function emit(event: RemoteEvent): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

async function main(command: RemoteCommand): Promise<void> {
  const client = createClient(BackupService, command.address);
  if (command.mode === "backup") {
    emit({ event: "sending" });
    const request = { ...command.request, speedLimit: BigInt(command.request.speedLimit ?? 0) };
    try {
      const response = await client.backup(request);
      emit({ event: "response", uuid: response.status?.uuid });
    } catch (error) {
      emit({ event: "error", code: (error as { code?: number }).code });
    }
    return;
  }
  let waiting = command.uuids.length * command.perJob;
  for (const uuid of command.uuids) {
    for (let index = 0; index < command.perJob; index++) {
      void (async () => {
        let first = true;
        for await (const _message of client.watchBackup({ uuid })) {
          if (first && --waiting === 0) emit({ event: "ready" });
          first = false;
        }
      })();
    }
  }
}

if (process.argv[1] === SELF) await main(JSON.parse(process.argv[2]!) as RemoteCommand);
