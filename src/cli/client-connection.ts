// The gRPC client the client commands share, and the frame every command
// runs in: connect, run, report a failure as `error: ...` with its exit code,
// close the channel.
import { BackupService } from "../../gen/vmabackup/v1/backup_pb.js";
import { createClient, type ClientOf } from "../server/grpc-client.js";
import { reportError } from "./client-errors.js";

export type BackupClient = ClientOf<typeof BackupService>;

/**
 * Unary calls answer at once (Backup only validates before it returns), so
 * a server that accepts the connection but never answers is a failure, not
 * something to wait for forever.
 */
const UNARY_TIMEOUT_MS = 30_000;

/** The deadline for one unary call started now. */
export function unaryDeadline(): Date {
  return new Date(Date.now() + UNARY_TIMEOUT_MS);
}

/**
 * Runs one client command against `serverAddress` and sets the process exit
 * code: the one `body` returns, or the one its error maps to.
 */
export async function runClientCommand(
  serverAddress: string,
  body: (client: BackupClient) => Promise<number>,
): Promise<void> {
  const client: BackupClient = createClient(BackupService, serverAddress);
  try {
    process.exitCode = await body(client);
  } catch (error) {
    const report = reportError(error, serverAddress);
    process.stderr.write(`${report.message}\n`);
    process.exitCode = report.exitCode;
  } finally {
    client.close();
  }
}
