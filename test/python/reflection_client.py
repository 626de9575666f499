"""A client that knows no vmabackup .proto: everything comes from reflection.

test/python-reflection.test.ts generates only the reflection stubs (from the
reflection.proto that @grpc/reflection ships, compiled as a top-level
reflection.proto so that its module does not clash with the grpc package)
and runs this script with Debian's /usr/bin/python3. Like grpcurl, it lists
the services, fetches each one's file and imports, builds them into a
DescriptorPool (Debian's python3-protobuf uses the C++ implementation,
which validates descriptors as protoc does), asks for extension numbers,
and calls Health/Check and BackupService/QueryBackup with messages made from
the served descriptors. It prints one JSON object; the test judges it.
"""

import argparse
import importlib
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True, help="directory holding reflection_pb2*.py")
    parser.add_argument("--address", required=True, help="server address, host:port")
    parser.add_argument("--token", default="", help="bearer token to send, if any")
    return parser.parse_args()


class Reflection:
    """One question per stream, as grpcurl's client does."""

    def __init__(self, stubs: str, channel: grpc.Channel, metadata: list) -> None:
        sys.path.insert(0, stubs)
        self.pb = importlib.import_module("reflection_pb2")
        self.stub = importlib.import_module("reflection_pb2_grpc").ServerReflectionStub(channel)
        self.metadata = metadata

    def ask(self, **request):
        responses = self.stub.ServerReflectionInfo(
            iter([self.pb.ServerReflectionRequest(**request)]), metadata=self.metadata, timeout=10
        )
        return next(iter(responses))

    def services(self) -> list:
        return sorted(service.name for service in self.ask(list_services="*").list_services_response.service)

    def files_of(self, symbol: str) -> list:
        response = self.ask(file_containing_symbol=symbol)
        if response.HasField("error_response"):
            return []
        return [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]


def add_in_order(pool: descriptor_pool.DescriptorPool, added: set, files: list) -> list:
    """Adds files after their imports; returns the errors the pool raised."""
    errors = []
    pending = [file for file in files if file.name not in added]
    while pending:
        ready = [file for file in pending if all(dependency in added for dependency in file.dependency)]
        if not ready:
            errors.append("missing imports: " + ", ".join(sorted(file.name for file in pending)))
            break
        for file in ready:
            try:
                pool.Add(file)
                added.add(file.name)
            except Exception as error:  # the C++ builder's message names the problem
                errors.append(f"{file.name}: {error}")
                added.add(file.name)
        pending = [file for file in pending if file.name not in added]
    return errors


def message_class(pool: descriptor_pool.DescriptorPool, name: str):
    descriptor = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def call_unary(channel: grpc.Channel, pool, method: str, request_json: dict, metadata: list) -> dict:
    """Calls /service/method with messages built from the served descriptors."""
    service_name, method_name = method.split("/")
    try:
        descriptor = pool.FindServiceByName(service_name).FindMethodByName(method_name)
    except KeyError:  # its file was refused by the pool (see pool_errors)
        return {"ok": False, "code": "NOT_IN_SCHEMA"}
    request_class = message_class(pool, descriptor.input_type.full_name)
    response_class = message_class(pool, descriptor.output_type.full_name)
    call = channel.unary_unary(
        f"/{method}", request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
    )
    try:
        response = call(request_class(**request_json), metadata=metadata, timeout=10)
        return {"ok": True, "fields": sorted(field.name for field, _ in response.ListFields())}
    except grpc.RpcError as error:
        return {"ok": False, "code": error.code().name}


def leading_comment(file: descriptor_pb2.FileDescriptorProto, path: list) -> str:
    for location in file.source_code_info.location:
        if list(location.path) == path:
            return location.leading_comments
    return ""


def main() -> None:
    args = parse_args()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    channel = grpc.insecure_channel(args.address)
    reflection = Reflection(args.stubs, channel, metadata)
    summary = {"services": reflection.services(), "pool_errors": {}, "comments": {}}

    pool = descriptor_pool.DescriptorPool()
    added: set = set()
    for service in summary["services"]:
        files = reflection.files_of(service)
        summary["pool_errors"][service] = add_in_order(pool, added, files)
        if files:
            # Path [6, 0]: the first service of the file, as grpcurl describe shows it.
            summary["comments"][service] = leading_comment(files[0], [6, 0])

    extensions = reflection.ask(all_extension_numbers_of_type="grpc.health.v1.HealthCheckRequest")
    summary["extension_numbers"] = (
        {"error": extensions.error_response.error_code}
        if extensions.HasField("error_response")
        else {"numbers": list(extensions.all_extension_numbers_response.extension_number)}
    )
    summary["health_check"] = call_unary(channel, pool, "grpc.health.v1.Health/Check", {}, metadata)
    if "vmabackup.v1.BackupService" in summary["services"]:
        summary["query_backup"] = call_unary(channel, pool, "vmabackup.v1.BackupService/QueryBackup", {}, metadata)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
