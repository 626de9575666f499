// A gRPC request written by hand over node:http2, for tests that need what
// no well-behaved client sends: a message whose length prefix claims more
// than the server accepts, streamed from one small buffer so that the test
// process itself stays small however large the message.
import * as http2 from "node:http2";

export interface RawRequest {
  /** "/package.Service/Method". */
  readonly path: string;
  /** Bytes the message starts with (e.g. a protobuf tag and length). */
  readonly head: Uint8Array;
  /** Total message length, head included, as the 5-byte prefix declares it; the rest is `fill`. */
  readonly length: number;
  /** Byte the message is padded with after `head`. */
  readonly fill: number;
}

export interface RawOutcome {
  /** grpc-status, or undefined when the stream ended without one. */
  readonly code: number | undefined;
  readonly message: string;
  /** Message bytes written before the server answered. */
  readonly sent: number;
}

const CHUNK = 256 * 1024;

/** Sends one unary request on a connection of its own and resolves with the server's status. */
export function sendRawRequest(address: string, request: RawRequest): Promise<RawOutcome> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://${address}`);
    session.on("error", reject);
    const stream = session.request({
      ":method": "POST",
      ":path": request.path,
      "content-type": "application/grpc",
      te: "trailers",
    });
    let code: number | undefined;
    let message = "";
    let sent = 0;
    let answered = false;
    const take = (headers: http2.IncomingHttpHeaders): void => {
      const status = headers["grpc-status"];
      if (status === undefined) return;
      answered = true;
      code = Number(status);
      message = decodeURIComponent(String(headers["grpc-message"] ?? ""));
    };
    stream.on("response", take);
    stream.on("trailers", take);
    stream.on("data", () => undefined);
    stream.on("error", () => undefined);
    stream.on("close", () => {
      session.close();
      resolve({ code, message, sent });
    });

    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(request.length, 1);
    const chunk = Buffer.alloc(CHUNK, request.fill);
    const write = async (): Promise<void> => {
      stream.write(prefix);
      stream.write(request.head);
      sent = request.head.byteLength;
      while (sent < request.length && !answered && !stream.destroyed) {
        const size = Math.min(CHUNK, request.length - sent);
        sent += size;
        if (!stream.write(size === CHUNK ? chunk : chunk.subarray(0, size))) {
          await new Promise<void>((drained) => {
            const done = (): void => {
              stream.off("drain", done);
              stream.off("close", done);
              drained();
            };
            stream.on("drain", done);
            stream.on("close", done);
          });
        }
      }
      if (answered) stream.close(http2.constants.NGHTTP2_CANCEL);
      else stream.end();
    };
    void write();
  });
}

/** The protobuf tag and length of a length-delimited field `number` of `length` bytes. */
export function fieldHead(number: number, length: number): Uint8Array {
  const bytes = [(number << 3) | 2];
  let rest = length;
  while (rest >= 0x80) {
    bytes.push((rest & 0x7f) | 0x80);
    rest = Math.floor(rest / 0x80);
  }
  bytes.push(rest);
  return Uint8Array.from(bytes);
}
