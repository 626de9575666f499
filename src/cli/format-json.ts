// JSON output of the client commands: the proto3 JSON mapping (field names
// like "transferredBytes", enums by name, 64-bit integers as strings), so
// scripts see the same shapes as grpcurl and every other proto3 client.
import { toJson, type DescMessage, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import { BackupStatusSchema, type BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";

/** Every field, defaults included, so scripts need not know proto3's omission rules. */
export function messageToJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): JsonValue {
  return toJson(schema, message, { alwaysEmitImplicit: true });
}

/** One status as a single line of JSON, for streams of updates. */
export function formatStatusJson(status: BackupStatus): string {
  return JSON.stringify(messageToJson(BackupStatusSchema, status));
}

/** A whole message as indented JSON, for commands that print one document. */
export function formatJsonDocument<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): string {
  return JSON.stringify(messageToJson(schema, message), null, 2);
}
