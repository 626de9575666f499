// Schema history of the job store. Each entry moves the schema from version
// i to i + 1; entries are never edited once released, only appended.
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE jobs (
     seq          INTEGER PRIMARY KEY AUTOINCREMENT,
     uuid         TEXT NOT NULL UNIQUE,
     state        TEXT NOT NULL,
     request_id   TEXT,
     start_time   INTEGER NOT NULL,
     record       TEXT NOT NULL
   );
   CREATE INDEX jobs_state ON jobs (state);
   CREATE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL;`,
];

/** The schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;
