// The daemon's SQLite database (node:sqlite, WAL) and the lock that keeps a second daemon
// off the same home. Only src/store/* runs SQL on the connection: every other module
// calls the query functions that live beside this file.

import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { DatabaseSync, type StatementSync } from 'node:sqlite'
import { SubstrateError } from '../errors.ts'
import { migrations as defaultMigrations, type Migration } from './migrations.ts'

export interface Db {
  readonly path: string
  readonly connection: DatabaseSync
  /** A prepared statement, cached per SQL text for the life of the connection. */
  prepare(sql: string): StatementSync
  /** Runs fn atomically; nested calls become savepoints. fn must be synchronous. */
  transaction<T>(fn: () => T): T
  close(): void
}

export interface OpenDatabaseInit {
  migrations?: readonly Migration[]
  busyTimeoutMs?: number
}

export function openDatabase(path: string, init: OpenDatabaseInit = {}): Db {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
  const connection = new DatabaseSync(path, {
    enableForeignKeyConstraints: true,
    timeout: init.busyTimeoutMs ?? 5000,
  })
  try {
    connection.exec('PRAGMA journal_mode = WAL')
    // NORMAL is durable across application crashes in WAL mode; only power loss can
    // drop the last transactions, never corrupt the file.
    connection.exec('PRAGMA synchronous = NORMAL')
    connection.exec('PRAGMA foreign_keys = ON')
    const statements = new Map<string, StatementSync>()
    let savepoints = 0
    const db: Db = {
      path,
      connection,
      prepare(sql) {
        let statement = statements.get(sql)
        if (statement === undefined) {
          statement = connection.prepare(sql)
          statements.set(sql, statement)
        }
        return statement
      },
      transaction<T>(fn: () => T): T {
        const nested = connection.isTransaction
        const savepoint = `sp${++savepoints}`
        // IMMEDIATE takes the write lock up front, so two writers wait on busy_timeout
        // instead of failing when a read transaction tries to upgrade.
        connection.exec(nested ? `SAVEPOINT ${savepoint}` : 'BEGIN IMMEDIATE')
        try {
          const result = fn()
          if (result instanceof Promise) throw new TypeError('db.transaction() needs a synchronous function')
          connection.exec(nested ? `RELEASE ${savepoint}` : 'COMMIT')
          return result
        } catch (err) {
          connection.exec(nested ? `ROLLBACK TO ${savepoint}; RELEASE ${savepoint}` : 'ROLLBACK')
          throw err
        }
      },
      close() {
        if (connection.isOpen) connection.close()
      },
    }
    migrate(db, init.migrations ?? defaultMigrations)
    return db
  } catch (err) {
    if (connection.isOpen) connection.close()
    throw err
  }
}

function migrate(db: Db, migrations: readonly Migration[]): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(`migration "${m.name}" has version ${m.version}, expected ${i + 1}`)
  })
  db.connection.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT`)
  const newest = db.prepare('SELECT max(version) AS v FROM schema_migrations').get()?.v
  if (typeof newest === 'number' && newest > migrations.length) {
    throw new SubstrateError(
      'E_CONFIG',
      `${db.path} has schema version ${newest}, newer than this substrate knows (${migrations.length})`,
      { hint: 'upgrade substrate, or use another SUBSTRATE_HOME' },
    )
  }
  for (const m of migrations) {
    // Checked again inside the transaction: another process may have applied it meanwhile.
    db.transaction(() => {
      if (db.prepare('SELECT 1 FROM schema_migrations WHERE version = ?').get(m.version)) return
      if (typeof m.up === 'string') db.connection.exec(m.up)
      else m.up(db.connection)
      db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(
        m.version,
        m.name,
        new Date().toISOString(),
      )
    })
  }
}

const heldLocks = new Set<string>()

/**
 * Takes $home/daemon.lock for this process. A live holder is refused with its pid; a lock
 * left by a dead process (SIGKILL, power loss) is taken over.
 */
export function acquireHomeLock(home: string): () => void {
  mkdirSync(home, { recursive: true })
  const lockPath = join(resolve(home), 'daemon.lock')
  if (heldLocks.has(lockPath)) throw alreadyRunning(home, process.pid)
  const mine = lockContent(process.pid)
  for (let attempt = 0; attempt < 100; attempt++) {
    if (tryLink(lockPath, mine)) {
      heldLocks.add(lockPath)
      let released = false
      return () => {
        if (released) return
        released = true
        heldLocks.delete(lockPath)
        if (readText(lockPath) === mine) rmSync(lockPath, { force: true })
      }
    }
    const seen = readText(lockPath)
    if (seen === undefined) continue // the holder released it between our two calls
    const holder = parseLock(seen)
    if (holder !== undefined && isAlive(holder)) throw alreadyRunning(home, holder.pid)
    takeOverStale(lockPath, seen)
  }
  throw new SubstrateError(
    'E_ALREADY_RUNNING',
    `could not take ${lockPath}: other processes keep competing for it`,
  )
}

function alreadyRunning(home: string, pid: number): SubstrateError {
  return new SubstrateError('E_ALREADY_RUNNING', `another substrate daemon (pid ${pid}) is using ${home}`, {
    hint: 'stop that daemon first, or set SUBSTRATE_HOME to another directory',
  })
}

/** Creates path with content atomically: readers never see a half-written lock file. */
function tryLink(path: string, content: string): boolean {
  const tmp = `${path}.${process.pid}.tmp`
  writeFileSync(tmp, content, { flush: true })
  try {
    linkSync(tmp, path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  } finally {
    rmSync(tmp, { force: true })
  }
}

// Removing a stale lock is a compare-and-delete, so it runs under a short-lived guard:
// without it, two starters could both see the same stale lock and one could delete the
// lock the other has just taken.
function takeOverStale(lockPath: string, staleContent: string): void {
  const guard = `${lockPath}.takeover`
  if (!tryLink(guard, lockContent(process.pid))) {
    const text = readText(guard)
    const owner = text === undefined ? undefined : parseLock(text)
    if (text !== undefined && (owner === undefined || !isAlive(owner))) rmSync(guard, { force: true })
    else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10)
    return
  }
  try {
    if (readText(lockPath) === staleContent) rmSync(lockPath, { force: true })
  } finally {
    rmSync(guard, { force: true })
  }
}

interface LockHolder {
  pid: number
  /** The holder's start time in clock ticks since boot (Linux), to notice a reused pid. */
  started: string
}

function lockContent(pid: number): string {
  return `${JSON.stringify({ pid, started: processStart(pid) ?? '' })}\n`
}

function parseLock(text: string): LockHolder | undefined {
  try {
    const value: unknown = JSON.parse(text)
    if (typeof value !== 'object' || value === null) return undefined
    const { pid, started } = value as Record<string, unknown>
    if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0) return undefined
    return { pid, started: typeof started === 'string' ? started : '' }
  } catch {
    return undefined // a torn or foreign file: nobody can be holding it
  }
}

function isAlive(holder: LockHolder): boolean {
  // Our own pid in a lock we do not hold means the previous daemon had our pid (common
  // in containers, where pids restart from the same small numbers).
  if (holder.pid === process.pid) return false
  try {
    process.kill(holder.pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  const stat = readText(`/proc/${holder.pid}/stat`)
  if (stat === undefined) return true // no procfs: trust kill(0)
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  if (fields[0] === 'Z' || fields[0] === 'X') return false
  return holder.started === '' || fields[19] === holder.started
}

function processStart(pid: number): string | undefined {
  const stat = readText(`/proc/${pid}/stat`)
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}
