// Pages through ListBackups with page tokens, so that `vmabackup list`
// shows every job the server remembers (or the first `limit`), newest first.
import type { BackupState, BackupStatus } from "../../gen/vmabackup/v1/backup_pb.js";
import { unaryDeadline, type BackupClient } from "./client-connection.js";

/** Jobs per request: large pages mean few round trips, and each stays small (~200 KiB). */
export const LIST_PAGE_SIZE = 500;

export interface ListSelection {
  /** Only jobs in these states; empty means every state. */
  readonly states: readonly BackupState[];
  /** Stop after this many jobs; undefined means all of them. */
  readonly limit?: number | undefined;
  /** Jobs per request (tests use small pages to exercise paging). */
  readonly pageSize?: number;
}

/**
 * Yields the selected jobs page by page. A page token marks a position in
 * the server's history, so jobs started meanwhile neither repeat nor shift
 * the pages still to come.
 */
export async function* listBackups(client: BackupClient, selection: ListSelection): AsyncGenerator<BackupStatus> {
  let remaining = selection.limit ?? Infinity;
  let pageToken = "";
  while (remaining > 0) {
    const pageSize = Math.min(selection.pageSize ?? LIST_PAGE_SIZE, remaining);
    const page = await client.listBackups(
      { pageSize, pageToken, states: [...selection.states] },
      { deadline: unaryDeadline() },
    );
    for (const status of page.statuses.slice(0, remaining)) yield status;
    remaining -= page.statuses.length;
    if (page.nextPageToken === "") return;
    pageToken = page.nextPageToken;
  }
}
