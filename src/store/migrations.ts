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
]
