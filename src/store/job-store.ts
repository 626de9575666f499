// Durable job history in an embedded SQLite database (WAL mode). The store
// keeps each job as a JSON record plus the few columns it is queried by; it
// knows nothing about the engine's types beyond this plain shape.
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { MIGRATIONS, SCHEMA_VERSION } from "./migrations.js";

/** What the store needs to know about a job; the rest travels in `record`. */
export interface StoredJob {
  readonly uuid: string;
  readonly state: string;
  readonly requestId?: string | undefined;
  /** Unix milliseconds. */
  readonly startTime: number;
  /** The job's latest revision; revisions of all jobs share one sequence. */
  readonly revision: number;
  /** The full job record, serialised by the caller's choice of shape. */
  readonly record: unknown;
}

export interface ListJobsQuery {
  readonly pageSize: number;
  /** Opaque cursor from a previous page; undefined for the first page. */
  readonly pageToken?: string | undefined;
  /** Only jobs in these states; empty or undefined means all. */
  readonly states?: readonly string[];
}

export interface JobPage {
  readonly jobs: StoredJob[];
  /** Cursor for the next page; undefined on the last page. */
  readonly nextPageToken?: string | undefined;
}

export class StoreVersionError extends Error {
  constructor(found: number) {
    super(
      `job database has schema version ${found}, newer than ${SCHEMA_VERSION} which this vmabackup understands; ` +
        `upgrade vmabackup or point --state-dir elsewhere (the database was left untouched)`,
    );
    this.name = "StoreVersionError";
  }
}

export class InvalidPageTokenError extends Error {
  constructor() {
    super("page_token is not a token returned by a previous call");
    this.name = "InvalidPageTokenError";
  }
}

interface JobRow {
  seq: number;
  uuid: string;
  state: string;
  request_id: string | null;
  start_time: number;
  revision: number;
  record: string;
}

const REVISION_COUNTER = "revision";

/** Statements used on every job change, compiled once. */
interface Statements {
  readonly save: StatementSync;
  readonly get: StatementSync;
  readonly latest: StatementSync;
  readonly inState: StatementSync;
  readonly byRequestId: StatementSync;
  readonly changedAfter: StatementSync;
  readonly delete: StatementSync;
  readonly maxRevision: StatementSync;
  readonly readCounter: StatementSync;
  readonly raiseCounter: StatementSync;
}

export class JobStore {
  readonly #db: DatabaseSync;
  readonly #statements: Statements;

  private constructor(db: DatabaseSync) {
    this.#db = db;
    this.#statements = {
      save: db.prepare(
        `INSERT INTO jobs (uuid, state, request_id, start_time, revision, record)
         VALUES (@uuid, @state, @requestId, @startTime, @revision, @record)
         ON CONFLICT (uuid) DO UPDATE
           SET state = excluded.state, revision = excluded.revision, record = excluded.record`,
      ),
      get: db.prepare(`SELECT * FROM jobs WHERE uuid = ?`),
      latest: db.prepare(`SELECT * FROM jobs ORDER BY seq DESC LIMIT 1`),
      inState: db.prepare(`SELECT * FROM jobs WHERE state = ? ORDER BY seq`),
      byRequestId: db.prepare(`SELECT * FROM jobs WHERE request_id = ? AND start_time >= ? ORDER BY seq DESC LIMIT 1`),
      changedAfter: db.prepare(`SELECT * FROM jobs WHERE revision > ? ORDER BY revision`),
      delete: db.prepare(`DELETE FROM jobs WHERE uuid = ?`),
      maxRevision: db.prepare(`SELECT coalesce(max(revision), 0) AS value FROM jobs`),
      readCounter: db.prepare(`SELECT value FROM counters WHERE name = ?`),
      raiseCounter: db.prepare(
        `INSERT INTO counters (name, value) VALUES (?, ?)
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)`,
      ),
    };
  }

  /**
   * Opens (creating if needed) the database file and brings its schema up
   * to date. Throws StoreVersionError, leaving the file untouched, when the
   * database comes from a newer version.
   */
  static open(path: string): JobStore {
    const db = new DatabaseSync(path, { timeout: 5000 });
    try {
      // Checked before anything is written, journal mode included.
      checkVersion(db);
      db.exec("PRAGMA journal_mode = WAL");
      // WAL with synchronous=NORMAL is durable against process crashes and
      // keeps each small write cheap; state changes are rare anyway.
      db.exec("PRAGMA synchronous = NORMAL");
      migrate(db);
      return new JobStore(db);
    } catch (error) {
      db.close();
      throw error;
    }
  }

  /** Inserts or replaces a job (its request id and start time never change). */
  save(job: StoredJob): void {
    this.#statements.save.run({
      uuid: job.uuid,
      state: job.state,
      requestId: job.requestId ?? null,
      startTime: job.startTime,
      revision: job.revision,
      record: JSON.stringify(job.record),
    });
  }

  get(uuid: string): StoredJob | undefined {
    const row = this.#statements.get.get(uuid) as JobRow | undefined;
    return row && toStoredJob(row);
  }

  /** The most recently started job. */
  latest(): StoredJob | undefined {
    const row = this.#statements.latest.get() as JobRow | undefined;
    return row && toStoredJob(row);
  }

  /** Jobs in the given state, oldest first. */
  inState(state: string): StoredJob[] {
    return (this.#statements.inState.all(state) as unknown as JobRow[]).map(toStoredJob);
  }

  /** The newest job started with this request id at or after `since` (Unix ms). */
  findByRequestId(requestId: string, since: number): StoredJob | undefined {
    const row = this.#statements.byRequestId.get(requestId, since) as JobRow | undefined;
    return row && toStoredJob(row);
  }

  /** Every job whose revision is greater than `revision`, lowest revision first. */
  changedAfter(revision: number): StoredJob[] {
    return (this.#statements.changedAfter.all(revision) as unknown as JobRow[]).map(toStoredJob);
  }

  /**
   * Newest first. The cursor is the insertion sequence of the last job
   * returned, so jobs added meanwhile never shift later pages.
   */
  list(query: ListJobsQuery): JobPage {
    const before = query.pageToken === undefined || query.pageToken === "" ? undefined : decodeToken(query.pageToken);
    const states = query.states ?? [];
    const conditions: string[] = [];
    const params: Array<string | number> = [];
    if (before !== undefined) {
      conditions.push("seq < ?");
      params.push(before);
    }
    if (states.length > 0) {
      conditions.push(`state IN (${states.map(() => "?").join(", ")})`);
      params.push(...states);
    }
    const where = conditions.length > 0 ? `WHERE ${conditions.join(" AND ")}` : "";
    const rows = this.#db
      .prepare(`SELECT * FROM jobs ${where} ORDER BY seq DESC LIMIT ?`)
      .all(...params, query.pageSize + 1) as unknown as JobRow[];
    const page = rows.slice(0, query.pageSize);
    const last = page[page.length - 1];
    const more = rows.length > query.pageSize && last !== undefined;
    return {
      jobs: page.map(toStoredJob),
      nextPageToken: more ? encodeToken(last.seq) : undefined,
    };
  }

  /** Removes a job's record; returns whether it existed. */
  delete(uuid: string): boolean {
    return Number(this.#statements.delete.run(uuid).changes) > 0;
  }

  /**
   * The highest revision ever handed out: the larger of the reserved mark
   * (see reserveRevisions) and the highest revision stored.
   */
  revisionHighWater(): number {
    const stored = (this.#statements.maxRevision.get() as { value: number }).value;
    const reserved = (this.#statements.readCounter.get(REVISION_COUNTER) as { value: number } | undefined)?.value ?? 0;
    return Math.max(stored, reserved);
  }

  /**
   * Records that revisions up to `upTo` may be handed out, so that after a
   * restart (even one that lost unsaved changes, or after the job holding
   * the highest revision was deleted) no revision is ever given twice.
   * Never lowers the mark.
   */
  reserveRevisions(upTo: number): void {
    this.#statements.raiseCounter.run(REVISION_COUNTER, upTo);
  }

  close(): void {
    this.#db.close();
  }
}

function schemaVersion(db: DatabaseSync): number {
  return (db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
}

function checkVersion(db: DatabaseSync): void {
  const current = schemaVersion(db);
  if (current > SCHEMA_VERSION) throw new StoreVersionError(current);
}

function migrate(db: DatabaseSync): void {
  const current = schemaVersion(db);
  for (let version = current; version < SCHEMA_VERSION; version++) {
    // One transaction per step: a failed step leaves the previous version.
    db.exec("BEGIN IMMEDIATE");
    try {
      db.exec(MIGRATIONS[version] as string);
      db.exec(`PRAGMA user_version = ${version + 1}`);
      db.exec("COMMIT");
    } catch (error) {
      db.exec("ROLLBACK");
      throw error;
    }
  }
}

function toStoredJob(row: JobRow): StoredJob {
  return {
    uuid: row.uuid,
    state: row.state,
    requestId: row.request_id ?? undefined,
    startTime: row.start_time,
    revision: row.revision,
    record: JSON.parse(row.record) as unknown,
  };
}

function encodeToken(seq: number): string {
  return Buffer.from(`v1:${seq}`).toString("base64url");
}

function decodeToken(token: string): number {
  const match = /^v1:(\d{1,15})$/.exec(Buffer.from(token, "base64url").toString());
  if (!match) throw new InvalidPageTokenError();
  return Number(match[1]);
}
