// grpc.health.v1.Health for load balancers and probes: the overall status
// ("") and one entry per service we serve, all flipped together. Served
// from the generated descriptor with the same adapter as BackupService:
// grpc-health-check would bring a second protobuf runtime (protobufjs and
// proto-loader, parsing health.proto at start-up): ~3 MiB of the daemon's
// RSS, which must stay under 100 MiB, for three small methods.
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthListResponseSchema,
} from "../../gen/grpc/health/v1/health_pb.js";
import type { HealthCheckRequest, HealthCheckResponse } from "../../gen/grpc/health/v1/health_pb.js";
import { addService } from "./grpc-adapter.js";

type StatusListener = (status: ServingStatus) => void;

export class ServerHealth {
  private readonly statuses = new Map<string, ServingStatus>();
  /** Open Watch calls, by the service name they watch. */
  private readonly listeners = new Map<string, Set<StatusListener>>();

  /** Starts SERVING for the overall status and every name in `serviceNames`. */
  constructor(serviceNames: readonly string[]) {
    for (const name of ["", ...serviceNames]) this.statuses.set(name, ServingStatus.SERVING);
  }

  addToServer(server: grpc.Server): void {
    addService(server, Health, {
      check: (call, callback) => {
        const status = this.statuses.get(call.request.service);
        if (status === undefined) {
          callback({ code: grpc.status.NOT_FOUND, details: `no health status for service "${call.request.service}"` });
        } else {
          callback(null, create(HealthCheckResponseSchema, { status }));
        }
      },
      watch: (call) => this.watch(call),
      list: (_call, callback) => {
        const statuses: Record<string, HealthCheckResponse> = {};
        for (const [name, status] of this.statuses) statuses[name] = create(HealthCheckResponseSchema, { status });
        callback(null, create(HealthListResponseSchema, { statuses }));
      },
    });
  }

  setServing(serving: boolean): void {
    const status = serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    for (const name of this.statuses.keys()) {
      if (this.statuses.get(name) === status) continue;
      this.statuses.set(name, status);
      for (const listener of this.listeners.get(name) ?? []) listener(status);
    }
  }

  /**
   * The current status at once (SERVICE_UNKNOWN for a name we do not serve),
   * then each change, until the client leaves. Changes are rare (shutdown),
   * so there is nothing to hold back for a slow reader.
   */
  private watch(call: grpc.ServerWritableStream<HealthCheckRequest, HealthCheckResponse>): void {
    const name = call.request.service;
    const send: StatusListener = (status) => {
      if (!call.cancelled && !call.destroyed) call.write(create(HealthCheckResponseSchema, { status }));
    };
    const watching = this.listeners.get(name) ?? new Set<StatusListener>();
    this.listeners.set(name, watching);
    watching.add(send);
    const stop = (): void => {
      watching.delete(send);
      if (watching.size === 0 && this.listeners.get(name) === watching) this.listeners.delete(name);
    };
    call.once("cancelled", stop);
    call.once("close", stop);
    send(this.statuses.get(name) ?? ServingStatus.SERVICE_UNKNOWN);
  }
}
