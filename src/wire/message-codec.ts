// How a protobuf-es message crosses grpc-js, the same for the server and
// the client: the HTTP/2 path of a method and the (de)serializers of its
// messages.
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethod, MessageShape } from "@bufbuild/protobuf";

/** The HTTP/2 path grpc-js routes a method by: "/package.Service/Method". */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** Wraps the encoded bytes in a Buffer without copying them. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function messageSerializer<Desc extends DescMessage>(schema: Desc): (message: MessageShape<Desc>) => Buffer {
  return (message) => asBuffer(toBinary(schema, message));
}

export function messageDeserializer<Desc extends DescMessage>(schema: Desc): (bytes: Buffer) => MessageShape<Desc> {
  return (bytes) => fromBinary(schema, bytes);
}
