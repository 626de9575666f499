// grpc.health.v1.Health for load balancers and probes: the overall status
// ("") and one entry per service we serve, all flipped together.
import type * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";

export class ServerHealth {
  private readonly implementation = new HealthImplementation();
  private readonly serviceNames: readonly string[];

  /** Starts SERVING for the overall status and every name in `serviceNames`. */
  constructor(serviceNames: readonly string[]) {
    this.serviceNames = ["", ...serviceNames];
    this.setServing(true);
  }

  addToServer(server: grpc.Server): void {
    this.implementation.addToServer(server);
  }

  setServing(serving: boolean): void {
    const status = serving ? "SERVING" : "NOT_SERVING";
    for (const name of this.serviceNames) this.implementation.setStatus(name, status);
  }
}
