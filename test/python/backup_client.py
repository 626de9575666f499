"""A vmabackup client written only against Python stubs generated from proto/.

test/python-client.test.ts generates the stubs into a temporary directory,
starts a real server and runs this script with Debian's /usr/bin/python3. The
script drives one backup of the given devices and config from start to end,
then provokes the documented error codes, and prints one JSON object on
stdout describing everything it saw. It records rather than judges: the
TypeScript test makes the assertions, so a failure there shows the data.

Errors carry a google.rpc.Status in the grpc-status-details-bin trailer.
Debian packages no grpcio-status, so the script decodes it the way
grpcio-status's rpc_status.from_call does, with google/rpc modules the test
generates from the same .proto files into the stubs directory.

An RPC that is expected to succeed and fails raises, which exits non-zero
with the traceback on stderr.
"""

import argparse
import importlib
import json
import sys
import uuid

import grpc


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True, help="directory holding vmabackup/v1/backup_pb2*.py")
    parser.add_argument("--address", required=True, help="server address, host:port")
    parser.add_argument("--backup-file", required=True, help="archive name to back up into")
    parser.add_argument("--device", action="append", default=[], metavar="NAME=PATH", help="a device, in order")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=PATH", help="a config file to store")
    parser.add_argument("--speed-limit", type=int, default=0, help="bytes per second, 0 = unlimited")
    parser.add_argument("--timeout", type=float, default=15.0, help="deadline of each RPC in seconds")
    return parser.parse_args()


def split_named_path(text: str) -> tuple:
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise SystemExit(f"expected NAME=PATH, got {text!r}")
    return name, path


class BackupClient:
    """BackupService through the generated stubs, with results as plain JSON values."""

    def __init__(self, stubs_dir: str, channel: grpc.Channel, timeout: float) -> None:
        # The stubs live in a temporary directory, never in the repository.
        sys.path.insert(0, stubs_dir)
        self.pb = importlib.import_module("vmabackup.v1.backup_pb2")
        self.stub = importlib.import_module("vmabackup.v1.backup_pb2_grpc").BackupServiceStub(channel)
        # google is a namespace package: google.rpc comes from the stubs
        # directory, google.protobuf from Debian's python3-protobuf.
        self.status_pb = importlib.import_module("google.rpc.status_pb2")
        self.details_pb = importlib.import_module("google.rpc.error_details_pb2")
        self.timeout = timeout

    def status_summary(self, status) -> dict:
        """Every BackupStatus field, read through the generated accessors."""

        def timestamp(name: str):
            return getattr(status, name).ToJsonString() if status.HasField(name) else None

        return {
            "uuid": status.uuid,
            "state": self.pb.BackupState.Name(status.state),
            "error_message": status.error_message,
            "backup_file": status.backup_file,
            "format": self.pb.BackupFormat.Name(status.format),
            "total_bytes": status.total_bytes,
            "transferred_bytes": status.transferred_bytes,
            "zero_bytes": status.zero_bytes,
            "start_time": timestamp("start_time"),
            "end_time": timestamp("end_time"),
            "speed_limit": status.speed_limit,
            "rate": status.rate,
            "eta_ms": status.eta.ToMilliseconds() if status.HasField("eta") else None,
            "revision": status.revision,
            "update_time": timestamp("update_time"),
            "request_id": status.request_id,
            "devices": [
                {
                    "name": device.name,
                    "dev_id": device.dev_id,
                    "size": device.size,
                    "transferred_bytes": device.transferred_bytes,
                    "zero_bytes": device.zero_bytes,
                }
                for device in status.devices
            ],
        }

    def backup(self, backup_file: str, devices: list, configs: list, speed_limit: int = 0, request_id: str = ""):
        """Starts a job; returns the BackupStatus message (not a summary: its uuid is needed)."""
        request = self.pb.BackupRequest(
            backup_file=backup_file,
            format=self.pb.BACKUP_FORMAT_VMA,
            devices=[self.pb.Device(name=name, path=path) for name, path in devices],
            configs=[self.pb.ConfigFile(name=name, data=data) for name, data in configs],
            speed_limit=speed_limit,
            request_id=request_id,
        )
        return self.stub.Backup(request, timeout=self.timeout).status

    def cancel(self, job_uuid: str) -> None:
        self.stub.CancelBackup(self.pb.CancelBackupRequest(uuid=job_uuid), timeout=self.timeout)

    def list_uuids(self, page_size: int) -> list:
        """Every job's uuid, newest first, page by page."""
        uuids, token = [], ""
        while True:
            request = self.pb.ListBackupsRequest(page_size=page_size, page_token=token)
            response = self.stub.ListBackups(request, timeout=self.timeout)
            uuids.extend(status.uuid for status in response.statuses)
            token = response.next_page_token
            if not token:
                return uuids

    def watch(self, job_uuid: str) -> list:
        """Every update until the stream ends; a stream ending in an error status raises."""
        request = self.pb.WatchBackupRequest(uuid=job_uuid)
        return [self.status_summary(response.status) for response in self.stub.WatchBackup(request, timeout=self.timeout)]

    def query(self, job_uuid: str) -> dict:
        response = self.stub.QueryBackup(self.pb.QueryBackupRequest(uuid=job_uuid), timeout=self.timeout)
        has_status = response.HasField("status")
        return {"has_status": has_status, "status": self.status_summary(response.status) if has_status else None}

    def rich_status(self, error: grpc.RpcError):
        """The google.rpc.Status of a failed call, as grpcio-status's rpc_status.from_call reads it."""
        for key, value in error.trailing_metadata() or ():
            if key != "grpc-status-details-bin":
                continue
            status = self.status_pb.Status.FromString(value)
            # from_call refuses a trailer that contradicts the call's own status.
            if status.code != error.code().value[0] or status.message != error.details():
                raise ValueError(f"status details disagree with the call: {status.code} {status.message!r}")
            return status
        return None

    def details_summary(self, status) -> dict:
        """The details we expect (ErrorInfo, BadRequest), unpacked from their Any."""
        summary = {"code": status.code, "message": status.message, "types": [], "error_info": None, "bad_request": None}
        for detail in status.details:
            summary["types"].append(detail.type_url)
            if detail.Is(self.details_pb.ErrorInfo.DESCRIPTOR):
                info = self.details_pb.ErrorInfo()
                detail.Unpack(info)
                summary["error_info"] = {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
            elif detail.Is(self.details_pb.BadRequest.DESCRIPTOR):
                bad_request = self.details_pb.BadRequest()
                detail.Unpack(bad_request)
                summary["bad_request"] = [
                    {"field": violation.field, "description": violation.description}
                    for violation in bad_request.field_violations
                ]
        return summary

    def failure_of(self, call) -> dict:
        """Code name, message and decoded details of a call that should fail; code "OK" when it did not."""
        try:
            call()
        except grpc.RpcError as error:
            status = self.rich_status(error)
            return {
                "code": error.code().name,
                "details": error.details(),
                "status": None if status is None else self.details_summary(status),
            }
        return {"code": "OK", "details": "", "status": None}


def read_configs(arguments: list) -> list:
    configs = []
    for name, path in map(split_named_path, arguments):
        with open(path, "rb") as config_file:
            configs.append((name, config_file.read()))
    return configs


def main() -> None:
    args = parse_args()
    devices = [split_named_path(argument) for argument in args.device]
    configs = read_configs(args.config)

    # A proxy from the environment must not capture a loopback test server.
    with grpc.insecure_channel(args.address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            raise SystemExit(f"no connection to {args.address} within {args.timeout} s")
        client = BackupClient(args.stubs, channel, args.timeout)

        summary = {"grpc_version": grpc.__version__, "query_latest_before_any_job": client.query("")}

        request_id = "python-" + str(uuid.uuid4())
        started = client.backup(args.backup_file, devices, configs, args.speed_limit, request_id)
        summary["started"] = client.status_summary(started)
        # With a uuid the stream ends OK right after the terminal status.
        summary["watch"] = client.watch(started.uuid)
        summary["query_by_uuid"] = client.query(started.uuid)
        summary["query_latest"] = client.query("")
        # A retry after a lost response: the same request with the same id starts nothing.
        summary["retried"] = client.status_summary(
            client.backup(args.backup_file, devices, configs, args.speed_limit, request_id)
        )
        summary["listed"] = client.list_uuids(page_size=1)

        summary["unknown_uuid"] = str(uuid.uuid4())
        summary["errors"] = {
            "query_unknown_uuid": client.failure_of(lambda: client.query(summary["unknown_uuid"])),
            "backup_without_devices": client.failure_of(
                lambda: client.backup("no-devices-" + args.backup_file, [], configs)
            ),
            # The archive just written exists now and must never be overwritten.
            "backup_to_existing_file": client.failure_of(lambda: client.backup(args.backup_file, devices, configs)),
            "watch_unknown_uuid": client.failure_of(lambda: client.watch(summary["unknown_uuid"])),
        }
        # A device another job is reading: start a slow job, collide with it, cancel it.
        busy = client.backup("busy-" + args.backup_file, devices, [], speed_limit=65536)
        summary["errors"]["device_in_use"] = client.failure_of(
            lambda: client.backup("other-" + args.backup_file, devices, [])
        )
        client.cancel(busy.uuid)

    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
