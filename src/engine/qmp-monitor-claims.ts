// Which job holds which QEMU's monitor. A fleecing session keeps its QMP
// connection for the whole job, and a QEMU monitor serves one client at a
// time: a second job on the same QEMU would wait for the greeting until it
// timed out, and then blame an unreachable QEMU. Claims let the opener
// refuse such a job at once, naming the job in the way. Claiming is
// synchronous and all-or-nothing, so two racing requests cannot both win.
import { EngineError } from "./errors.js";
import { quote } from "./quote.js";
import { REASON } from "./reasons.js";

export interface MonitorClaim {
  /** The socket's identity (its real path), shared by every name for it. */
  readonly key: string;
  /** The socket as the request gave it, for the message. */
  readonly qmpSocket: string;
  /** The request field naming it, e.g. "devices[0].qemu.qmp_socket". */
  readonly field: string;
}

export class QmpMonitorClaims {
  private readonly owners = new Map<string, string>();

  /** Claims every socket for `jobId`, or throws FAILED_PRECONDITION QMP_SOCKET_IN_USE and claims none. */
  claim(jobId: string, claims: readonly MonitorClaim[]): void {
    for (const claim of claims) {
      const owner = this.owners.get(claim.key);
      if (owner !== undefined) {
        throw new EngineError(
          "failed-precondition",
          REASON.QMP_SOCKET_IN_USE,
          `${claim.field}: job ${owner} holds the QMP monitor ${quote(claim.qmpSocket)} until it ends ` +
            "(QEMU serves one monitor client at a time); back up all drives of this QEMU in one job, or after that job",
          claim.field,
          { job_uuid: owner },
        );
      }
    }
    for (const claim of claims) this.owners.set(claim.key, jobId);
  }

  /** Gives back every socket `jobId` holds. */
  release(jobId: string): void {
    for (const [key, owner] of this.owners) {
      if (owner === jobId) this.owners.delete(key);
    }
  }
}
