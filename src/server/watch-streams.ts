// Serves engine status subscriptions as gRPC server streams, minding the
// grpc-js server-streaming pitfalls: writes respect back-pressure (wait for
// 'drain' or 'cancelled', never 'drain' alone), nothing is written after the
// client left, errors end the stream through the 'error' event (destroy()
// would send no status), and the subscription is closed whichever way the
// stream ends so the engine never holds a dead watcher.
import type * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { EngineError, REASON, RevisionFilter } from "../engine/index.js";
import type { JobStatus } from "../engine/index.js";
import type { EncodedMessage } from "./encoded-message.js";
import { reportRpcFailure } from "./rpc-errors.js";
import { WriteTurns } from "./write-turns.js";

/**
 * Watch-stream writes per event-loop turn (see write-turns.ts). Measured
 * with `npm run bench:watchers` on 2 cores: 32 to 128 deliver alike; one
 * turn for all is slower and stalls every other call for the whole burst.
 */
const WRITES_PER_TURN = 64;

/** How a watch stream ends when the server shuts down. */
function shuttingDown(): EngineError {
  return new EngineError(
    "unavailable",
    REASON.ENGINE_SHUT_DOWN,
    "the server is shutting down; watch again after it restarts (with after_revision)",
  );
}

/** What the engine's watch() returns. */
export interface StatusSource extends AsyncIterable<JobStatus> {
  close(): void;
}

/** A subscription to serve, and the revision the watcher already has (0: none). */
export interface WatchOpening {
  readonly source: StatusSource;
  readonly afterRevision: number;
  /** The source ends only when the engine shuts down (all jobs): its end is then UNAVAILABLE. */
  readonly endless?: boolean;
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
  /** Each open stream's stop function, with its call (for the buffered count). */
  private readonly streams = new Map<() => void, WatchCall<unknown>>();
  /** Set by endAll(): streams end with UNAVAILABLE, not OK. */
  private ending = false;
  private readonly turns: WriteTurns;

  constructor(writesPerTurn: number = WRITES_PER_TURN) {
    this.turns = new WriteTurns(writesPerTurn);
  }

  /** Number of open streams. */
  get size(): number {
    return this.streams.size;
  }

  /**
   * Messages written to open streams that grpc-js has not yet handed to
   * HTTP/2. Back-pressure keeps this at about 16 per stream however slowly
   * a watcher reads (for metrics and tests).
   */
  get bufferedMessages(): number {
    let count = 0;
    for (const call of this.streams.values()) count += call.writableLength;
    return count;
  }

  /**
   * Streams the source `open` returns to `call`, one message per status
   * newer than its `afterRevision` and than what the stream already sent of
   * that job, until the source ends (then status OK), the client leaves, or
   * endAll() is called (UNAVAILABLE). `open` runs inside the stream's error handling,
   * so that a refused request (e.g. an unknown uuid) ends the stream with
   * its status code.
   */
  async serve<Response>(
    call: WatchCall<Response>,
    open: () => WatchOpening,
    encode: (status: JobStatus) => Response | EncodedMessage,
    logger: Logger,
  ): Promise<void> {
    const stopController = new AbortController();
    let source: StatusSource | undefined;
    let endless = false;
    let sourceClosed = false;
    const stop = (): void => {
      stopController.abort();
      if (source !== undefined && !sourceClosed) {
        sourceClosed = true;
        source.close();
      }
    };
    this.streams.set(stop, call);
    call.on("cancelled", stop);
    call.on("close", stop);
    try {
      if (call.cancelled || stopController.signal.aborted) return;
      if (this.ending) throw shuttingDown();
      const opening = open();
      source = opening.source;
      endless = opening.endless === true;
      // A resumed watch asked for nothing at or before its after_revision,
      // and the engine may hand over one snapshot twice.
      const filter = new RevisionFilter(opening.afterRevision);
      for await (const status of source) {
        if (stopController.signal.aborted || call.cancelled) break;
        if (!filter.isNew(status)) continue;
        const turn = this.turns.take();
        if (turn !== undefined) {
          await turn;
          if (stopController.signal.aborted || call.cancelled) break;
        }
        // The server's serializer takes an EncodedMessage as well (grpc-adapter.ts).
        if (!call.write(encode(status) as Response)) {
          await drainOrStop(call, stopController.signal);
        }
        if (stopController.signal.aborted || call.cancelled) break;
      }
      if (call.cancelled) return;
      // Cut off by endAll(), or an all-jobs source ended by the engine's
      // shutdown: not "all done" (OK) but "reconnect" (retryable).
      if ((this.ending && stopController.signal.aborted) || endless) throw shuttingDown();
      call.end();
    } catch (error) {
      const failure = reportRpcFailure(logger, "WatchBackup", error);
      if (!call.cancelled) call.emit("error", failure);
    } finally {
      stop();
      this.streams.delete(stop);
      call.off("cancelled", stop);
      call.off("close", stop);
    }
  }

  /** Ends every open stream with UNAVAILABLE (on shutdown), and any opened later. */
  endAll(): void {
    this.ending = true;
    for (const stop of [...this.streams.keys()]) stop();
  }
}
