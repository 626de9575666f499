// A status encoded once for all its watchers: the server's response
// serializer sends an EncodedMessage's bytes unchanged, and serializes
// anything else as before.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { WatchBackupResponseSchema } from "../gen/vmabackup/v1/backup_pb.js";
import { EncodedMessage, passingEncoded } from "../src/server/encoded-message.js";
import { messageSerializer } from "../src/wire/message-codec.js";

describe("passingEncoded", () => {
  const serialize = passingEncoded(messageSerializer(WatchBackupResponseSchema));
  const response = create(WatchBackupResponseSchema, { status: { uuid: "u-1", speedLimit: 42n } });

  it("sends an EncodedMessage's own bytes, not a re-encoding", () => {
    const bytes = Buffer.from(toBinary(WatchBackupResponseSchema, response));
    const encoded = new EncodedMessage(bytes);
    expect(serialize(encoded)).toBe(bytes);
    expect(serialize(encoded)).toBe(bytes);
  });

  it("serializes a message as the plain serializer does", () => {
    const bytes = serialize(response);
    expect(fromBinary(WatchBackupResponseSchema, bytes).status?.speedLimit).toBe(42n);
    expect(bytes.equals(Buffer.from(toBinary(WatchBackupResponseSchema, response)))).toBe(true);
  });
});
