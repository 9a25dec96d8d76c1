// The schema, as an append-only list. A migration is never edited once committed: a
// later change is a new entry at the end, so every database converges to the same
// schema whatever version it started from.

import type { DatabaseSync } from 'node:sqlite'

export interface Migration {
  /** 1-based and contiguous: the position in the list, checked when a database opens. */
  version: number
  name: string
  up: string | ((db: DatabaseSync) => void)
}

export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: 'model store',
    // A model row may only name a blob that has a row: the foreign key keeps
    // "a name pointing at a missing blob" impossible inside the database.
    up: `
      CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        path TEXT NOT NULL,
        created_at TEXT NOT NULL
      ) STRICT;
      CREATE TABLE models (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL REFERENCES blobs(digest),
        size INTEGER NOT NULL,
        modified_at TEXT NOT NULL,
        details_json TEXT NOT NULL
      ) STRICT;
      CREATE INDEX models_by_digest ON models(digest);
    `,
  },
  {
    version: 2,
    name: 'credits ledger',
    // ledger_ops holds every author's chain; UNIQUE (author, seq) is what turns a second op
    // at a taken seq into a fork proof instead of a silent overwrite. `facts` is what the
    // balance fold needs, derived once at ingest so a cold fold never re-parses op bytes.
    // The rowid is the local arrival order, which checkpoints count through.
    up: `
      CREATE TABLE ledger_ops (
        cid TEXT PRIMARY KEY,
        author TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        at INTEGER NOT NULL,
        facts TEXT NOT NULL,
        bytes BLOB NOT NULL,
        UNIQUE (author, seq)
      ) STRICT;
      CREATE TABLE ledger_authors (
        author TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        head TEXT NOT NULL,
        head_at INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE ledger_forks (
        author TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        first BLOB NOT NULL,
        second BLOB NOT NULL,
        detected_at INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE ledger_checkpoints (
        name TEXT PRIMARY KEY,
        through INTEGER NOT NULL,
        state TEXT NOT NULL,
        saved_at INTEGER NOT NULL
      ) STRICT;
    `,
  },
  {
    version: 3,
    name: 'model chunk manifests',
    // One manifest per blob; it goes when the blob's row goes, so a removed model's
    // manifest can never be served.
    up: `
      CREATE TABLE model_manifests (
        digest TEXT PRIMARY KEY REFERENCES blobs(digest) ON DELETE CASCADE,
        cid TEXT NOT NULL,
        chunk_size INTEGER NOT NULL,
        bytes BLOB NOT NULL
      ) STRICT;
    `,
  },
]
