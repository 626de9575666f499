// A QMP (QEMU Machine Protocol) client over a unix socket: greeting,
// capability negotiation, commands matched to replies by id, asynchronous
// events kept apart from replies. npm's QMP packages are unmaintained and
// have neither ids, timeouts nor types, so this small one is ours.

import { EventEmitter } from "node:events";
import { createConnection, type Socket } from "node:net";
import { createInterface } from "node:readline";
import { errorMessage, QemuSourceError } from "./errors.js";

/** An asynchronous QMP event (BLOCK_JOB_CANCELLED, JOB_STATUS_CHANGE, SHUTDOWN, ...). */
export interface QmpEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
  readonly timestamp: { readonly seconds: number; readonly microseconds: number };
}

export interface QmpVersion {
  readonly major: number;
  readonly minor: number;
  readonly micro: number;
}

export interface QmpConnectOptions {
  /** Time for connecting, the greeting and qmp_capabilities together (ms). */
  readonly connectTimeoutMs?: number;
  /** Default time a command may take before it rejects with QMP_TIMEOUT (ms). */
  readonly commandTimeoutMs?: number;
}

export interface QmpExecuteOptions {
  readonly timeoutMs?: number;
}

interface QmpClientEvents {
  event: [QmpEvent];
  /** The connection ended; `error` says why when it was not our own close(). */
  close: [QemuSourceError | undefined];
}

interface PendingCommand {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: QemuSourceError) => void;
  readonly timer: NodeJS.Timeout;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;

export class QmpClient extends EventEmitter<QmpClientEvents> {
  readonly socketPath: string;
  readonly version: QmpVersion;
  private readonly socket: Socket;
  private readonly commandTimeoutMs: number;
  private readonly pending = new Map<string, PendingCommand>();
  private nextId = 1;
  private closedWith: QemuSourceError | null = null;

  /** Connects, reads the greeting and leaves negotiation mode; rejects with QMP_UNREACHABLE or QMP_PROTOCOL_ERROR. */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const { socket, lines, greeting } = await openAndGreet(socketPath, connectTimeoutMs);
    const client = new QmpClient(socketPath, socket, lines, greeting, options.commandTimeoutMs);
    try {
      await client.execute("qmp_capabilities", undefined, { timeoutMs: connectTimeoutMs });
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  private constructor(
    socketPath: string,
    socket: Socket,
    lines: AsyncIterator<string>,
    version: QmpVersion,
    commandTimeoutMs: number | undefined,
  ) {
    super();
    this.socketPath = socketPath;
    this.socket = socket;
    this.version = version;
    this.commandTimeoutMs = commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    socket.on("error", () => {
      // The 'close' that follows ends everything; the error itself says no more.
    });
    socket.on("close", () => this.finish(this.lost("the QMP connection closed")));
    void this.readLines(lines);
  }

  /** True once the connection ended (QEMU exited, protocol error, or close()). */
  get closed(): boolean {
    return this.closedWith !== null;
  }

  /**
   * Runs one command and resolves with its `return` value. Rejects with
   * QMP_COMMAND_FAILED (carrying QMP's class and desc), QMP_TIMEOUT, or
   * QMP_CLOSED when the connection ends first.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: QmpExecuteOptions = {}): Promise<T> {
    if (this.closedWith !== null) {
      return Promise.reject(
        new QemuSourceError("QMP_CLOSED", `cannot run ${command}: ${this.closedWith.message}`, {
          cause: this.closedWith,
        }),
      );
    }
    const id = `vmab-${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new QemuSourceError(
            "QMP_TIMEOUT",
            `QEMU did not answer ${command} within ${timeoutMs} ms on ${this.socketPath}`,
          ),
        );
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject, timer });
      const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  /**
   * Resolves with the first event named `name` for which `matches` holds, or
   * rejects with QMP_TIMEOUT / QMP_CLOSED. Subscribe before the command that
   * causes the event, or the event may pass unseen.
   */
  waitForEvent(name: string, matches: (event: QmpEvent) => boolean, timeoutMs: number): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      const onEvent = (event: QmpEvent): void => {
        if (event.event === name && matches(event)) {
          settle();
          resolve(event);
        }
      };
      const onClose = (error: QemuSourceError | undefined): void => {
        settle();
        reject(error ?? new QemuSourceError("QMP_CLOSED", `the QMP connection closed while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        settle();
        reject(new QemuSourceError("QMP_TIMEOUT", `no ${name} event within ${timeoutMs} ms on ${this.socketPath}`));
      }, timeoutMs);
      const settle = (): void => {
        clearTimeout(timer);
        this.off("event", onEvent);
        this.off("close", onClose);
      };
      if (this.closedWith !== null) {
        onClose(this.closedWith);
        return;
      }
      this.on("event", onEvent);
      this.on("close", onClose);
    });
  }

  /** Closes the connection; pending commands reject with QMP_CLOSED. Safe to call twice. */
  close(): void {
    this.finish(new QemuSourceError("QMP_CLOSED", `the QMP connection to ${this.socketPath} was closed by us`), false);
    this.socket.destroy();
  }

  private lost(why: string): QemuSourceError {
    return new QemuSourceError("QMP_CLOSED", `${why} (${this.socketPath}): QEMU exited or dropped the monitor`);
  }

  private async readLines(lines: AsyncIterator<string>): Promise<void> {
    try {
      for (;;) {
        const next = await lines.next();
        if (next.done === true) break;
        if (next.value.trim() === "") continue;
        this.handleLine(next.value);
        if (this.closedWith !== null) return;
      }
    } catch {
      // The socket errored: its 'close' handler reports the loss.
    }
  }

  private handleLine(line: string): void {
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch {
      this.protocolError(`QEMU sent a line that is not JSON: ${line.slice(0, 200)}`);
      return;
    }
    if (!isObject(message)) {
      this.protocolError(`QEMU sent a JSON value that is not an object: ${line.slice(0, 200)}`);
      return;
    }
    if (typeof message.event === "string") {
      try {
        this.emit("event", toEvent(message));
      } catch (error) {
        // A listener's bug must not stop this reader: surface it as any listener error would.
        process.nextTick(() => {
          throw error;
        });
      }
      return;
    }
    const id = message.id;
    if (typeof id !== "string") {
      // QEMU answers a request it could not parse with an error and no id.
      this.protocolError(`QEMU sent a reply without our id: ${line.slice(0, 200)}`);
      return;
    }
    const pending = this.pending.get(id);
    if (pending === undefined) return; // the reply to a command that already timed out
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("return" in message) {
      pending.resolve(message.return);
      return;
    }
    const error = isObject(message.error) ? message.error : {};
    const qmpClass = typeof error.class === "string" ? error.class : "UnknownError";
    const qmpDesc = typeof error.desc === "string" ? error.desc : JSON.stringify(message.error);
    pending.reject(
      new QemuSourceError("QMP_COMMAND_FAILED", `QEMU refused ${pending.command}: ${qmpDesc} (${qmpClass})`, {
        qmpClass,
        qmpDesc,
      }),
    );
  }

  private protocolError(message: string): void {
    this.finish(new QemuSourceError("QMP_PROTOCOL_ERROR", `${message} (${this.socketPath})`));
    this.socket.destroy();
  }

  /** Ends the client once: rejects what is pending and emits 'close'. */
  private finish(error: QemuSourceError, report = true): void {
    if (this.closedWith !== null) return;
    this.closedWith = error;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(
        new QemuSourceError(
          error.reason === "QMP_PROTOCOL_ERROR" ? error.reason : "QMP_CLOSED",
          `${pending.command}: ${error.message}`,
          {
            cause: error,
          },
        ),
      );
    }
    this.pending.clear();
    this.emit("close", report ? error : undefined);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function toEvent(message: Record<string, unknown>): QmpEvent {
  const timestamp = isObject(message.timestamp) ? message.timestamp : {};
  return {
    event: message.event as string,
    data: isObject(message.data) ? message.data : {},
    timestamp: {
      seconds: typeof timestamp.seconds === "number" ? timestamp.seconds : 0,
      microseconds: typeof timestamp.microseconds === "number" ? timestamp.microseconds : 0,
    },
  };
}

/** Connects and reads the greeting line within `timeoutMs`; owns the socket until it resolves. */
async function openAndGreet(
  socketPath: string,
  timeoutMs: number,
): Promise<{ socket: Socket; lines: AsyncIterator<string>; greeting: QmpVersion }> {
  const socket = createConnection({ path: socketPath });
  const lines = createInterface({ input: socket, crlfDelay: Number.POSITIVE_INFINITY })[Symbol.asyncIterator]();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new QemuSourceError(
            "QMP_UNREACHABLE",
            `no QMP greeting from ${socketPath} within ${timeoutMs} ms (is it a QMP socket? another client may hold the monitor)`,
          ),
        ),
      timeoutMs,
    );
  });
  const connectFailure = new Promise<never>((_, reject) => {
    socket.once("error", (error) =>
      reject(
        new QemuSourceError(
          "QMP_UNREACHABLE",
          `cannot connect to the QMP socket ${socketPath}: ${errorMessage(error)}`,
          {
            cause: error,
          },
        ),
      ),
    );
  });
  try {
    const first = await Promise.race([lines.next(), deadline, connectFailure]);
    if (first.done === true) {
      throw new QemuSourceError("QMP_UNREACHABLE", `${socketPath} closed the connection before the QMP greeting`);
    }
    return { socket, lines, greeting: parseGreeting(first.value, socketPath) };
  } catch (error) {
    socket.destroy();
    if (error instanceof QemuSourceError) throw error;
    // readline passes the socket's own error (ENOENT, ECONNREFUSED) through lines.next().
    throw new QemuSourceError(
      "QMP_UNREACHABLE",
      `cannot connect to the QMP socket ${socketPath}: ${errorMessage(error)}`,
      {
        cause: error,
      },
    );
  } finally {
    clearTimeout(timer);
    // Keep later socket errors from becoming unhandled rejections of a settled race.
    connectFailure.catch(() => {});
    deadline.catch(() => {});
  }
}

function parseGreeting(line: string, socketPath: string): QmpVersion {
  let message: unknown;
  try {
    message = JSON.parse(line);
  } catch {
    throw new QemuSourceError(
      "QMP_PROTOCOL_ERROR",
      `${socketPath} is not a QMP socket: it greeted with ${line.slice(0, 200)}`,
    );
  }
  const qmp = isObject(message) && isObject(message.QMP) ? message.QMP : undefined;
  const version =
    qmp !== undefined && isObject(qmp.version) && isObject(qmp.version.qemu) ? qmp.version.qemu : undefined;
  if (version === undefined) {
    throw new QemuSourceError(
      "QMP_PROTOCOL_ERROR",
      `${socketPath} is not a QMP socket: it greeted with ${line.slice(0, 200)}`,
    );
  }
  return {
    major: typeof version.major === "number" ? version.major : 0,
    minor: typeof version.minor === "number" ? version.minor : 0,
    micro: typeof version.micro === "number" ? version.micro : 0,
  };
}
