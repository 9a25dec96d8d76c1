import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { pathToFileURL } from 'node:url'
import { SubstrateError } from '../../src/errors.ts'
import { acquireHomeLock, openDatabase } from '../../src/store/database.ts'
import { migrations } from '../../src/store/migrations.ts'

const root = mkdtempSync(join(tmpdir(), 'substrate-db-'))
after(() => rmSync(root, { recursive: true, force: true }))
let n = 0
const freshDir = () => {
  const dir = join(root, `case-${++n}`)
  return dir
}

test('migrations apply once and reopening the database applies nothing again', () => {
  const path = join(root, 'migrate.db')
  const first = openDatabase(path)
  const versions = () =>
    first.connection
      .prepare('SELECT version FROM schema_migrations ORDER BY version')
      .all()
      .map((r) => r.version)
  assert.deepEqual(
    versions(),
    migrations.map((m) => m.version),
  )
  first.close()

  let ran = 0
  const extended = [
    ...migrations,
    {
      version: migrations.length + 1,
      name: 'test table',
      up: () => {
        ran++
      },
    },
  ]
  openDatabase(path, { migrations: extended }).close()
  const again = openDatabase(path, { migrations: extended })
  assert.equal(ran, 1)
  const rows = again.connection.prepare('SELECT count(*) AS n FROM schema_migrations').get()
  assert.equal(rows?.n, extended.length)
  again.close()
})

test('a database written by a newer schema is refused instead of being used', () => {
  const path = join(root, 'newer.db')
  const extended = [...migrations, { version: migrations.length + 1, name: 'future', up: '' }]
  openDatabase(path, { migrations: extended }).close()
  assert.throws(
    () => openDatabase(path),
    (err: unknown) => err instanceof SubstrateError && err.code === 'E_CONFIG',
  )
})

test('the database runs in WAL mode with foreign keys enforced', () => {
  const db = openDatabase(join(root, 'wal.db'))
  assert.equal(db.connection.prepare('PRAGMA journal_mode').get()?.journal_mode, 'wal')
  assert.equal(db.connection.prepare('PRAGMA foreign_keys').get()?.foreign_keys, 1)
  assert.throws(() =>
    db.connection.exec(
      "INSERT INTO models (name, digest, size, modified_at, details_json) VALUES ('x:latest', 'sha256:00', 1, '', '{}')",
    ),
  )
  db.close()
})

test('a failed transaction leaves nothing behind, also when nested', () => {
  const db = openDatabase(join(root, 'tx.db'))
  const insert = (digest: string) =>
    db.prepare("INSERT INTO blobs (digest, size, path, created_at) VALUES (?, 1, 'p', 'now')").run(digest)
  db.transaction(() => {
    insert('a')
    assert.throws(() =>
      db.transaction(() => {
        insert('b')
        throw new Error('inner fails')
      }),
    )
  })
  assert.throws(() =>
    db.transaction(() => {
      insert('c')
      throw new Error('outer fails')
    }),
  )
  const digests = db.connection.prepare('SELECT digest FROM blobs ORDER BY digest').all()
  assert.deepEqual(
    digests.map((r) => r.digest),
    ['a'],
  )
  db.close()
})

test('a second holder of the home lock in the same process is refused', () => {
  const home = freshDir()
  const release = acquireHomeLock(home)
  assert.throws(
    () => acquireHomeLock(home),
    (err: unknown) =>
      err instanceof SubstrateError &&
      err.code === 'E_ALREADY_RUNNING' &&
      err.message.includes(`pid ${process.pid}`),
  )
  release()
  acquireHomeLock(home)()
})

test('a lock held by another live process is refused naming its pid, and taken over once it is SIGKILLed', async () => {
  const home = freshDir()
  const moduleUrl = pathToFileURL(join(import.meta.dirname, '../../src/store/database.ts')).href
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { acquireHomeLock } from ${JSON.stringify(moduleUrl)}
       acquireHomeLock(${JSON.stringify(home)}); console.log('locked'); setInterval(() => {}, 1000)`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  try {
    const [line] = (await once(child.stdout, 'data')) as [Buffer]
    assert.equal(line.toString().trim(), 'locked')
    assert.throws(
      () => acquireHomeLock(home),
      (err: unknown) =>
        err instanceof SubstrateError &&
        err.code === 'E_ALREADY_RUNNING' &&
        err.message.includes(`pid ${child.pid}`),
    )
  } finally {
    child.kill('SIGKILL')
    await once(child, 'exit')
  }
  const release = acquireHomeLock(home)
  release()
})

test('a torn or foreign lock file counts as free', () => {
  const home = freshDir()
  acquireHomeLock(home)() // creates the directory
  writeFileSync(join(home, 'daemon.lock'), 'garbage')
  acquireHomeLock(home)()
  writeFileSync(join(home, 'daemon.lock'), JSON.stringify({ pid: 2 ** 22 + 12345 }))
  acquireHomeLock(home)()
})
