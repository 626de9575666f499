// The set of open WatchBackup streams (watch-stream.ts serves each one):
// they share the write turns of a status change, and shutdown ends them all.
import type { Logger } from "pino";
import type { JobStatus } from "../engine/index.js";
import type { EncodedMessage } from "./encoded-message.js";
import { reportRpcFailure } from "./rpc-errors.js";
import { type WatchCall, type WatchOpening, WatchStream } from "./watch-stream.js";
import { WriteTurns } from "./write-turns.js";

export type { StatusSource, WatchOpening } from "./watch-stream.js";

/**
 * Watch-stream writes per event-loop turn (see write-turns.ts). Measured
 * with `npm run bench:watchers` on 2 cores: 32 to 128 deliver alike; one
 * turn for all is slower and stalls every other call for the whole burst.
 */
const WRITES_PER_TURN = 64;

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
  serve<Response>(
    call: WatchCall<Response>,
    open: () => WatchOpening,
    encode: (status: JobStatus) => Response | EncodedMessage,
    logger: Logger,
  ): Promise<void> {
    return new Promise((resolve) => {
      const stream: WatchStream<Response> = new WatchStream(call, {
        turns: this.turns,
        ending: () => this.ending,
        encode,
        fail: (error) => {
          const failure = reportRpcFailure(logger, "WatchBackup", error);
          if (!call.cancelled) call.emit("error", failure);
        },
        closed: () => {
          this.streams.delete(stream.stop);
          resolve();
        },
      });
      this.streams.set(stream.stop, call);
      stream.start(open);
    });
  }

  /** Ends every open stream with UNAVAILABLE (on shutdown), and any opened later. */
  endAll(): void {
    this.ending = true;
    for (const stop of [...this.streams.keys()]) stop();
  }
}
