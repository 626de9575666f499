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

  // 2: revisions, so that an all-jobs watcher can resume after the last
  // change it saw. Jobs from version 1 take their insertion order as their
  // revision. The counters table keeps the revision high-water mark, which
  // survives the deletion of the job that last held it.
  `ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
   UPDATE jobs SET revision = seq;
   CREATE INDEX jobs_revision ON jobs (revision);
   CREATE TABLE counters (
     name         TEXT PRIMARY KEY,
     value        INTEGER NOT NULL
   ) WITHOUT ROWID;`,
];

/** The schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;
