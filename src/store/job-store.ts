// Durable job history in an embedded SQLite database (WAL mode). The store
// keeps each job as a JSON record plus the few columns it is queried by; it
// knows nothing about the engine's types beyond this plain shape.
import Database from "better-sqlite3";
import { MIGRATIONS, SCHEMA_VERSION } from "./migrations.js";

/** What the store needs to know about a job; the rest travels in `record`. */
export interface StoredJob {
  readonly uuid: string;
  readonly state: string;
  readonly requestId?: string;
  /** Unix milliseconds. */
  readonly startTime: number;
  /** The full job record, serialised by the caller's choice of shape. */
  readonly record: unknown;
}

export interface ListJobsQuery {
  readonly pageSize: number;
  /** Opaque cursor from a previous page; undefined for the first page. */
  readonly pageToken?: string;
  /** Only jobs in these states; empty or undefined means all. */
  readonly states?: readonly string[];
}

export interface JobPage {
  readonly jobs: StoredJob[];
  /** Cursor for the next page; undefined on the last page. */
  readonly nextPageToken?: string;
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
  record: string;
}

export class JobStore {
  readonly #db: Database.Database;

  private constructor(db: Database.Database) {
    this.#db = db;
  }

  /** Opens (creating if needed) the database file and brings its schema up to date. */
  static open(path: string): JobStore {
    const db = new Database(path);
    try {
      db.pragma("journal_mode = WAL");
      // WAL with synchronous=NORMAL is durable against process crashes and
      // keeps each small write cheap; state changes are rare anyway.
      db.pragma("synchronous = NORMAL");
      db.pragma("busy_timeout = 5000");
      migrate(db);
    } catch (error) {
      db.close();
      throw error;
    }
    return new JobStore(db);
  }

  /** Inserts or replaces a job. */
  save(job: StoredJob): void {
    this.#db
      .prepare(
        `INSERT INTO jobs (uuid, state, request_id, start_time, record)
         VALUES (@uuid, @state, @requestId, @startTime, @record)
         ON CONFLICT (uuid) DO UPDATE SET state = excluded.state, record = excluded.record`,
      )
      .run({
        uuid: job.uuid,
        state: job.state,
        requestId: job.requestId ?? null,
        startTime: job.startTime,
        record: JSON.stringify(job.record),
      });
  }

  get(uuid: string): StoredJob | undefined {
    const row = this.#db.prepare(`SELECT * FROM jobs WHERE uuid = ?`).get(uuid) as JobRow | undefined;
    return row && toStoredJob(row);
  }

  /** The most recently started job. */
  latest(): StoredJob | undefined {
    const row = this.#db.prepare(`SELECT * FROM jobs ORDER BY seq DESC LIMIT 1`).get() as JobRow | undefined;
    return row && toStoredJob(row);
  }

  /** Jobs in the given state, oldest first. */
  inState(state: string): StoredJob[] {
    const rows = this.#db.prepare(`SELECT * FROM jobs WHERE state = ? ORDER BY seq`).all(state) as JobRow[];
    return rows.map(toStoredJob);
  }

  /** The newest job started with this request id at or after `since` (Unix ms). */
  findByRequestId(requestId: string, since: number): StoredJob | undefined {
    const row = this.#db
      .prepare(`SELECT * FROM jobs WHERE request_id = ? AND start_time >= ? ORDER BY seq DESC LIMIT 1`)
      .get(requestId, since) as JobRow | undefined;
    return row && toStoredJob(row);
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
      .all(...params, query.pageSize + 1) as JobRow[];
    const page = rows.slice(0, query.pageSize);
    const more = rows.length > query.pageSize;
    return {
      jobs: page.map(toStoredJob),
      nextPageToken: more ? encodeToken(page[page.length - 1].seq) : undefined,
    };
  }

  /** Removes a job's record; returns whether it existed. */
  delete(uuid: string): boolean {
    return this.#db.prepare(`DELETE FROM jobs WHERE uuid = ?`).run(uuid).changes > 0;
  }

  close(): void {
    this.#db.close();
  }
}

function migrate(db: Database.Database): void {
  const current = db.pragma("user_version", { simple: true }) as number;
  if (current > SCHEMA_VERSION) {
    throw new StoreVersionError(current);
  }
  for (let version = current; version < SCHEMA_VERSION; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version]);
      db.pragma(`user_version = ${version + 1}`);
    })();
  }
}

function toStoredJob(row: JobRow): StoredJob {
  return {
    uuid: row.uuid,
    state: row.state,
    requestId: row.request_id ?? undefined,
    startTime: row.start_time,
    record: JSON.parse(row.record) as unknown,
  };
}

function encodeToken(seq: number): string {
  return Buffer.from(`v1:${seq}`).toString("base64url");
}

function decodeToken(token: string): number {
  const match = /^v1:(\d+)$/.exec(Buffer.from(token, "base64url").toString());
  if (!match) throw new InvalidPageTokenError();
  return Number(match[1]);
}
