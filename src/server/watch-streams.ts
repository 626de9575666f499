// Serves engine status subscriptions as gRPC server streams, following the
// grpc-js pitfalls in stack-notes.md: writes respect back-pressure (wait for
// 'drain' or 'cancelled', never 'drain' alone), nothing is written after the
// client left, errors end the stream through the 'error' event (destroy()
// would send no status), and the subscription is closed whichever way the
// stream ends so the engine never holds a dead watcher.
import type * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { JobStatus } from "../engine/types.js";
import { reportRpcFailure } from "./rpc-errors.js";

/** What the engine's watch() returns. */
export interface StatusSource extends AsyncIterable<JobStatus> {
  close(): void;
}

type WatchCall<Response> = grpc.ServerWritableStream<unknown, Response>;

/** Resolves on 'drain', on 'cancelled' or when `stop` aborts, whichever comes first. */
function drainOrStop(call: WatchCall<unknown>, stop: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      call.off("drain", done);
      call.off("cancelled", done);
      stop.removeEventListener("abort", done);
      resolve();
    };
    call.on("drain", done);
    call.on("cancelled", done);
    stop.addEventListener("abort", done);
  });
}

/** The set of open watch streams, so that shutdown can end them all. */
export class WatchStreams {
  private readonly stoppers = new Set<() => void>();

  /** Number of open streams. */
  get size(): number {
    return this.stoppers.size;
  }

  /**
   * Streams `source` to `call`, one message per status, until the source
   * ends (then status OK), the client leaves, or endAll() is called (OK).
   * `open` runs inside the stream's error handling, so that an engine error
   * (e.g. an unknown uuid) ends the stream with its status code.
   */
  async serve<Response>(
    call: WatchCall<Response>,
    open: () => StatusSource,
    encode: (status: JobStatus) => Response,
    logger: Logger,
  ): Promise<void> {
    const stopController = new AbortController();
    let source: StatusSource | undefined;
    let sourceClosed = false;
    const stop = (): void => {
      stopController.abort();
      if (source !== undefined && !sourceClosed) {
        sourceClosed = true;
        source.close();
      }
    };
    this.stoppers.add(stop);
    call.on("cancelled", stop);
    call.on("close", stop);
    try {
      if (call.cancelled || stopController.signal.aborted) return;
      source = open();
      for await (const status of source) {
        if (stopController.signal.aborted || call.cancelled) break;
        if (!call.write(encode(status))) {
          await drainOrStop(call, stopController.signal);
        }
        if (stopController.signal.aborted || call.cancelled) break;
      }
      if (!call.cancelled) call.end();
    } catch (error) {
      const failure = reportRpcFailure(logger, "WatchBackup", error);
      if (!call.cancelled) call.emit("error", failure);
    } finally {
      stop();
      this.stoppers.delete(stop);
      call.off("cancelled", stop);
      call.off("close", stop);
    }
  }

  /** Ends every open stream with status OK (on shutdown). */
  endAll(): void {
    for (const stop of [...this.stoppers]) stop();
  }
}
