// One WatchBackup stream: engine statuses written to a grpc-js server
// stream. Driven by callbacks, not an async loop: one status change goes to
// every watcher at once, and the promises of a loop per watcher (its
// iterator, its write turn) were most of the daemon's garbage per change,
// whose collection made the slowest deliveries to 1,000 watchers. Here the
// subscription calls pump() when a status arrives, WriteTurns when the
// stream's turn comes, the call on 'drain'.
//
// The grpc-js server-streaming pitfalls are minded: writes respect
// back-pressure (wait for 'drain' or 'cancelled', never 'drain' alone),
// nothing is written after the client left, errors end the stream through
// the 'error' event (destroy() would send no status), and the subscription
// is closed whichever way the stream ends so the engine never holds a dead
// watcher.
import type * as grpc from "@grpc/grpc-js";
import { EngineError, REASON, RevisionFilter } from "../engine/index.js";
import type { JobStatus } from "../engine/index.js";
import type { EncodedMessage } from "./encoded-message.js";
import type { WriteTurns } from "./write-turns.js";

/** What the engine's watch() returns (see StatusSubscription). */
export interface StatusSource {
  poll(): JobStatus | undefined;
  readonly done: boolean;
  onReadable(listener: () => void): void;
  close(): void;
}

/** A subscription to serve, and the revision the watcher already has (0: none). */
export interface WatchOpening {
  readonly source: StatusSource;
  readonly afterRevision: number;
  /** The source ends only when the engine shuts down (all jobs): its end is then UNAVAILABLE. */
  readonly endless?: boolean;
}

export type WatchCall<Response> = grpc.ServerWritableStream<unknown, Response>;

/** What a stream needs from the set of streams it belongs to. */
export interface WatchStreamContext<Response> {
  readonly turns: WriteTurns;
  /** The server ends every stream (shutdown): an ended stream is UNAVAILABLE, not OK. */
  ending(): boolean;
  /** The server's serializer takes an EncodedMessage as well (grpc-adapter.ts). */
  encode(status: JobStatus): Response | EncodedMessage;
  /** Reports a failure and sends it as the stream's status. */
  fail(error: unknown): void;
  /** The stream is over, whichever way: called once. */
  closed(): void;
}

/** How a watch stream ends when the server shuts down. */
export function shuttingDown(): EngineError {
  return new EngineError(
    "unavailable",
    REASON.ENGINE_SHUT_DOWN,
    "the server is shutting down; watch again after it restarts (with after_revision)",
  );
}

export class WatchStream<Response> {
  private readonly call: WatchCall<Response>;
  private readonly context: WatchStreamContext<Response>;
  private source: StatusSource | undefined;
  /** A resumed watch asked for nothing at or before its after_revision, and the engine may hand over one snapshot twice. */
  private filter = new RevisionFilter();
  private endless = false;
  /** A status that passed the filter and waits for this stream's write turn. */
  private pending: JobStatus | undefined;
  private waitingForTurn = false;
  /** A turn was granted in a later event-loop turn and not used yet. */
  private holdsTurn = false;
  private waitingForDrain = false;
  /** The client left or the server ends every stream. */
  private stopped = false;
  private finished = false;
  /** pump() is running; a call meanwhile (from the source, say) makes it go round once more. */
  private pumping = false;
  private pumpAgain = false;

  constructor(call: WatchCall<Response>, context: WatchStreamContext<Response>) {
    this.call = call;
    this.context = context;
  }

  /**
   * Opens the subscription (`open` runs inside the stream's error handling,
   * so that a refused request, e.g. an unknown uuid, ends the stream with
   * its status code) and writes what it yields.
   */
  start(open: () => WatchOpening): void {
    this.call.on("cancelled", this.stop);
    this.call.on("close", this.stop);
    this.call.on("drain", this.onDrain);
    if (this.call.cancelled || this.stopped) {
      this.finish();
      return;
    }
    try {
      if (this.context.ending()) throw shuttingDown();
      const opening = open();
      this.source = opening.source;
      this.endless = opening.endless === true;
      this.filter = new RevisionFilter(opening.afterRevision);
    } catch (error) {
      this.fail(error);
      return;
    }
    this.source.onReadable(this.pump);
    this.pump();
  }

  /** Ends the stream early: the client left, or the server ends every stream. */
  readonly stop = (): void => {
    if (this.stopped) return;
    this.stopped = true;
    this.pump();
  };

  private readonly onDrain = (): void => {
    if (!this.waitingForDrain) return;
    this.waitingForDrain = false;
    this.pump();
  };

  private readonly onTurn = (): void => {
    this.waitingForTurn = false;
    this.holdsTurn = true;
    this.pump();
  };

  private readonly pump = (): void => {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        this.writeWhatCan();
      } while (this.pumpAgain && !this.finished);
    } catch (error) {
      this.fail(error);
    } finally {
      this.pumping = false;
    }
  };

  /** Writes queued statuses until it must wait for a status, a turn or 'drain', or the stream is over. */
  private writeWhatCan(): void {
    for (;;) {
      if (this.finished) return;
      if (this.stopped || this.call.cancelled) {
        this.complete();
        return;
      }
      const source = this.source;
      if (source === undefined || this.waitingForTurn || this.waitingForDrain) return;
      let status = this.pending;
      if (status === undefined) {
        status = source.poll();
        if (status === undefined) {
          if (source.done) this.complete();
          return;
        }
        if (!this.filter.isNew(status)) continue;
      }
      this.pending = undefined;
      if (!this.holdsTurn && !this.context.turns.take(this.onTurn)) {
        this.pending = status;
        this.waitingForTurn = true;
        return;
      }
      this.holdsTurn = false;
      if (!this.call.write(this.context.encode(status) as Response)) this.waitingForDrain = true;
    }
  }

  /** The source ended or the stream was stopped: ends the call with its status. */
  private complete(): void {
    if (this.call.cancelled) {
      this.finish();
      return;
    }
    // Cut off by the server's shutdown, or an all-jobs source ended by the
    // engine's shutdown: not "all done" (OK) but "reconnect" (retryable).
    if ((this.context.ending() && this.stopped) || this.endless) {
      this.fail(shuttingDown());
      return;
    }
    this.call.end();
    this.finish();
  }

  private fail(error: unknown): void {
    if (this.finished) return;
    try {
      this.context.fail(error);
    } finally {
      this.finish();
    }
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.stopped = true;
    this.pending = undefined;
    this.call.off("cancelled", this.stop);
    this.call.off("close", this.stop);
    this.call.off("drain", this.onDrain);
    this.source?.close();
    this.context.closed();
  }
}
