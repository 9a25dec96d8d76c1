// The libp2p datastore on disk: the interface-datastore API over one SQLite table, so the
// peer store (peers, their addresses, protocols, keys) and the DHT's provider records
// survive a restart and a restarted daemon can reconnect without its bootstrap list.
// It lives in its own file ($home/mesh/datastore.db), not in the daemon's database:
// libp2p writes on every identify, and those writes must not queue behind the ledger's.

import { type AbortOptions, NotFoundError } from '@libp2p/interface'
import { BaseDatastore } from 'datastore-core'
import { Key, type KeyQuery, type Pair, type Query } from 'interface-datastore'
import { type Db, openDatabase } from './database.ts'
import type { Migration } from './migrations.ts'
import { blob, text } from './row.ts'

// Its own append-only list: this file has its own schema_migrations table.
export const datastoreMigrations: readonly Migration[] = [
  {
    version: 1,
    name: 'libp2p datastore',
    up: 'CREATE TABLE datastore (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT, WITHOUT ROWID',
  },
]

export class SqliteDatastore extends BaseDatastore {
  readonly db: Db

  constructor(path: string) {
    super()
    this.db = openDatabase(path, { migrations: datastoreMigrations })
  }

  override put(key: Key, value: Uint8Array, options?: AbortOptions): Key {
    options?.signal?.throwIfAborted()
    this.db
      .prepare(
        'INSERT INTO datastore (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      )
      .run(key.toString(), value)
    return key
  }

  override get(key: Key, options?: AbortOptions): Uint8Array {
    options?.signal?.throwIfAborted()
    const row = this.db.prepare('SELECT value FROM datastore WHERE key = ?').get(key.toString())
    if (row === undefined) throw new NotFoundError(`no value for ${key.toString()}`)
    return blob(row, 'value')
  }

  override has(key: Key, options?: AbortOptions): boolean {
    options?.signal?.throwIfAborted()
    return this.db.prepare('SELECT 1 FROM datastore WHERE key = ?').get(key.toString()) !== undefined
  }

  override delete(key: Key, options?: AbortOptions): void {
    options?.signal?.throwIfAborted()
    this.db.prepare('DELETE FROM datastore WHERE key = ?').run(key.toString())
  }

  // A batch from BaseDatastore runs put/delete one by one; one transaction makes it atomic
  // and turns N fsyncs into one.
  override batch() {
    const puts: Pair[] = []
    const dels: Key[] = []
    return {
      put: (key: Key, value: Uint8Array) => {
        puts.push({ key, value })
      },
      delete: (key: Key) => {
        dels.push(key)
      },
      commit: async (options?: AbortOptions) => {
        options?.signal?.throwIfAborted()
        this.db.transaction(() => {
          for (const p of puts) this.put(p.key, p.value)
          for (const k of dels) this.delete(k)
        })
      },
    }
  }

  // The prefix narrows the SQL to a key range; BaseDatastore still applies filters, order,
  // offset and limit (and the prefix again, harmlessly).
  override *_all(q: Query, options?: AbortOptions): Generator<Pair> {
    for (const row of this.rows(q.prefix, true)) {
      options?.signal?.throwIfAborted()
      yield { key: new Key(text(row, 'key')), value: blob(row, 'value') }
    }
  }

  override *_allKeys(q: KeyQuery, options?: AbortOptions): Generator<Key> {
    for (const row of this.rows(q.prefix, false)) {
      options?.signal?.throwIfAborted()
      yield new Key(text(row, 'key'))
    }
  }

  close(): void {
    this.db.close()
  }

  // Read whole before yielding: a consumer may write (or query again through the same
  // cached statement) between two yields.
  private rows(prefix: string | undefined, withValues: boolean) {
    const columns = withValues ? 'key, value' : 'key'
    if (prefix === undefined || prefix === '' || prefix === '/') {
      return this.db.prepare(`SELECT ${columns} FROM datastore ORDER BY key`).all()
    }
    // Every key that starts with the prefix sorts in [prefix, prefix + U+10FFFF).
    return this.db
      .prepare(`SELECT ${columns} FROM datastore WHERE key >= ? AND key < ? ORDER BY key`)
      .all(prefix, `${prefix}\u{10FFFF}`)
  }
}

/** Opens (creating if needed) the datastore at `path`. */
export function openDatastore(path: string): SqliteDatastore {
  return new SqliteDatastore(path)
}
