// Bounds how many requests are read into memory at once. A request of up to
// the message limit (message-limits.ts, ~1.5 MiB) is buffered whole before
// its handler runs, several times over (frames, the joined message, the
// decoded fields), so a few hundred concurrent large requests would take
// gigabytes. Calls past the limit wait, unread: their HTTP/2 stream stays
// paused and flow control stops the client after one window (64 KiB).
// Small requests arrive in one frame and hold a slot for a moment only;
// a slot is held at most `readTimeoutMs`, so slow senders cannot keep the
// others waiting for long. The slot is taken only once the call is
// authenticated: the interceptors before this one (auth.ts) have let the
// metadata through by the time a handler asks to read.
import * as grpc from "@grpc/grpc-js";

export interface RequestReadGateOptions {
  /** Requests read at the same time; more wait. */
  readonly maxConcurrentReads: number;
  /** A request not received this long after its read began ends RESOURCE_EXHAUSTED. */
  readonly readTimeoutMs: number;
}

/** Concurrent request reads and how many wait, for tests and metrics. */
export interface RequestReadGate {
  readonly interceptor: grpc.ServerInterceptor;
  readonly reading: number;
  readonly waiting: number;
}

/** A counting semaphore whose waiters can leave the queue. */
class Slots {
  active = 0;
  readonly queue: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  /** Calls `grant` once a slot is free; returns the function that gives the slot (or the place in line) back. */
  take(grant: () => void): () => void {
    let state: "waiting" | "holding" | "done" = "waiting";
    const start = (): void => {
      state = "holding";
      this.active += 1;
      grant();
    };
    if (this.active < this.limit) start();
    else this.queue.push(start);
    return () => {
      if (state === "waiting") this.queue.splice(this.queue.indexOf(start), 1);
      if (state === "holding") {
        this.active -= 1;
        this.queue.shift()?.();
      }
      state = "done";
    };
  }
}

/** The first startRead of a call (the request message) waits for a slot. */
class GatedCall extends grpc.ServerInterceptingCall {
  private asked = false;

  constructor(
    next: grpc.ServerInterceptingCallInterface,
    responder: grpc.Responder,
    private readonly firstRead: (read: () => void) => void,
  ) {
    super(next, responder);
  }

  override startRead(): void {
    if (this.asked) {
      super.startRead();
      return;
    }
    this.asked = true;
    this.firstRead(() => super.startRead());
  }
}

export function createRequestReadGate(options: RequestReadGateOptions): RequestReadGate {
  const slots = new Slots(options.maxConcurrentReads);
  const interceptor: grpc.ServerInterceptor = (_method, call) => {
    let giveBack: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    let ended = false;
    const release = (): void => {
      ended = true;
      clearTimeout(timer);
      giveBack?.();
      giveBack = undefined;
    };
    const gated: GatedCall = new GatedCall(
      call,
      {
        start(next) {
          next({
            onReceiveMessage(message, nextMessage) {
              release();
              nextMessage(message);
            },
            onCancel() {
              release();
            },
          });
        },
        sendStatus(status, next) {
          release();
          next(status);
        },
      },
      (read) => {
        if (ended) return;
        giveBack = slots.take(() => {
          timer = setTimeout(() => {
            gated.sendStatus({
              code: grpc.status.RESOURCE_EXHAUSTED,
              details: `request not received within ${options.readTimeoutMs} ms`,
              metadata: new grpc.Metadata(),
            });
          }, options.readTimeoutMs);
          read();
        });
      },
    );
    return gated;
  };
  return {
    interceptor,
    get reading() {
      return slots.active;
    },
    get waiting() {
      return slots.queue.length;
    },
  };
}
