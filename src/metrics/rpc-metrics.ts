// A grpc-js server interceptor that counts every call by method and the
// status code it ended with. Calls to paths nothing is registered at also
// reach the interceptors (src/server/unknown-methods.ts); they are counted
// under one "unknown" label, so a caller cannot grow the label set.
import * as grpc from "@grpc/grpc-js";
import { Counter } from "prom-client";
import type { Registry } from "prom-client";

/** "OK", "NOT_FOUND", ... for a numeric code; the number itself when unknown. */
function codeName(code: number): string {
  return grpc.status[code] ?? String(code);
}

/** ["vmabackup.v1.BackupService", "Backup"] for "/vmabackup.v1.BackupService/Backup". */
function serviceAndMethod(path: string): [string, string] {
  const [, service = "", method = ""] = path.split("/");
  return [service, method];
}

/** The end of a call that sent no status through us: the deadline passed or the client left. */
function unsentStatusCode(call: grpc.ServerInterceptingCallInterface): grpc.status {
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(deadlineMs) && Date.now() >= deadlineMs
    ? grpc.status.DEADLINE_EXCEEDED
    : grpc.status.CANCELLED;
}

/** The label of every path that names no registered method. */
export const UNKNOWN_METHOD_LABEL = "unknown";

export class RpcMetrics {
  /** Whether a path names a registered method; until told, every path does. */
  private isKnownPath: (path: string) => boolean = () => true;

  /**
   * Counts each call once, when its status is sent (or, for a call that
   * ends without one, when it is cancelled). Give it to grpc-js before other
   * interceptors so that it also sees the calls they refuse (auth).
   */
  readonly interceptor: grpc.ServerInterceptor;

  constructor(registry: Registry) {
    const rpcs = new Counter({
      name: "vmabackup_rpcs_total",
      help: "RPCs handled, by service, method and gRPC status code.",
      labelNames: ["service", "method", "code"],
      registers: [registry],
    });
    this.interceptor = (methodDefinition, call) => {
      const [service, method] = this.isKnownPath(methodDefinition.path)
        ? serviceAndMethod(methodDefinition.path)
        : [UNKNOWN_METHOD_LABEL, UNKNOWN_METHOD_LABEL];
      let counted = false;
      const count = (code: number): void => {
        if (counted) return;
        counted = true;
        rpcs.labels(service, method, codeName(code)).inc();
      };
      return new grpc.ServerInterceptingCall(call, {
        start(next) {
          // grpc-js also reports a cancel after every sent status; `counted` skips it.
          next({ onCancel: () => count(unsentStatusCode(call)) });
        },
        sendStatus(status, next) {
          count(status.code);
          next(status);
        },
      });
    };
  }

  /** Tells which paths are registered methods (the server, once its services are added). */
  knowPathsBy(isKnownPath: (path: string) => boolean): void {
    this.isKnownPath = isKnownPath;
  }
}
