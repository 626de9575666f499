// A response serialized ahead of time, so that one status sent to many
// watchers is encoded once, not once per watcher. The server's response
// serializers pass its bytes through unchanged (grpc-adapter.ts); grpc-js
// copies them into its own frame, so one EncodedMessage may go to any
// number of streams.
export class EncodedMessage {
  readonly bytes: Buffer;

  constructor(bytes: Buffer) {
    this.bytes = bytes;
  }
}

/** `serialize`, except that an EncodedMessage is sent as it is. */
export function passingEncoded<T>(serialize: (value: T) => Buffer): (value: T | EncodedMessage) => Buffer {
  return (value) => (value instanceof EncodedMessage ? value.bytes : serialize(value));
}
