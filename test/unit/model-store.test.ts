import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { pathToFileURL } from 'node:url'
import { SubstrateError } from '../../src/errors.ts'
import { createLogger } from '../../src/logger.ts'
import { writeTinyModel } from '../../src/models/builtin.ts'
import { openWritableFile } from '../../src/models/pull.ts'
import { createModelStore, type ModelStoreInit } from '../../src/models/store.ts'
import type { ProgressEvent } from '../../src/models/types.ts'
import { openDatabase } from '../../src/store/database.ts'
import * as table from '../../src/store/models-table.ts'

const root = mkdtempSync(join(tmpdir(), 'substrate-models-'))
const tinyPath = join(root, 'tiny.gguf')
let tiny: Buffer
before(async () => {
  await writeTinyModel(tinyPath)
  tiny = readFileSync(tinyPath)
})
after(() => rmSync(root, { recursive: true, force: true }))

let homes = 0
async function openStore(home = join(root, `home-${++homes}`), extra: Partial<ModelStoreInit> = {}) {
  const logs: string[] = []
  const db = openDatabase(join(home, 'substrate.db'))
  const logger = createLogger({ level: 'debug', write: (line) => logs.push(line) })
  const store = createModelStore({ db, logger }, { dir: join(home, 'models'), ...extra })
  await store.start()
  return { home, db, store, logs, close: () => store.stop().then(() => db.close()) }
}

const entries = (dir: string) => readdirSync(dir).sort()
const code = (expected: string, message?: RegExp) => (err: unknown) => {
  assert.ok(err instanceof SubstrateError, `expected a SubstrateError, got ${String(err)}`)
  assert.equal(err.code, expected, err.message)
  if (message) assert.match(err.message, message)
  return true
}
const writeFixture = (name: string, bytes: Buffer) => {
  const path = join(root, name)
  writeFileSync(path, bytes)
  return path
}

test('an imported tiny model is listed and resolved with its details', async () => {
  const { store, close } = await openStore()
  const events: ProgressEvent[] = []
  const record = await store.importFile(tinyPath, { name: 'My-Tiny', onProgress: (e) => events.push(e) })
  assert.equal(record.name, 'my-tiny:latest')
  assert.equal(record.digest, `sha256:${createHash('sha256').update(tiny).digest('hex')}`)
  assert.equal(record.size, tiny.length)
  assert.deepEqual(readFileSync(record.path), tiny)
  assert.equal(record.details.family, 'llama')
  assert.equal(record.details.contextLength, 4096)
  assert.equal(record.details.quantization, 'F32')
  assert.match(record.details.chatTemplate ?? '', /im_start/)
  assert.deepEqual(await store.resolve('my-tiny'), record)
  assert.deepEqual(store.list(), [record])
  const copied = events.filter((e) => e.status === 'importing')
  assert.equal(copied.at(-1)?.completed, tiny.length)
  assert.equal(events.at(-1)?.status, 'success')
  await close()
})

test('identical content under two names is stored once, and removing one name keeps the blob', async () => {
  const { home, db, store, close } = await openStore()
  const a = await store.importFile(tinyPath, { name: 'a' })
  const b = await store.importFile(tinyPath, { name: 'b:v1' })
  assert.equal(a.digest, b.digest)
  const blobs = join(home, 'models', 'blobs')
  assert.equal(entries(blobs).length, 1)
  await store.remove('a:latest')
  assert.equal(entries(blobs).length, 1)
  assert.equal((await store.resolve('b:v1')).digest, a.digest)
  await assert.rejects(store.remove('a'), code('E_MODEL_NOT_FOUND'))
  await store.remove('b:v1')
  assert.deepEqual(entries(blobs), [])
  assert.deepEqual(table.listBlobs(db), [])
  await close()
})

test('pointing a name at new content drops the blob nobody uses any more', async () => {
  const { home, store, close } = await openStore()
  await store.importFile(tinyPath, { name: 'm' })
  const changed = Buffer.from(tiny)
  changed.writeUInt8(changed.readUInt8(changed.length - 1) ^ 1, changed.length - 1) // valid GGUF, other bytes
  const second = await store.importFile(writeFixture('changed.gguf', changed), { name: 'm' })
  assert.deepEqual(entries(join(home, 'models', 'blobs')), [`sha256-${second.digest.slice(7)}`])
  await close()
})

test('invalid names and missing files are refused clearly', async () => {
  const { store, close } = await openStore()
  for (const bad of ['', 'has space', 'x:', '../up', 'a:b:c', 'UPPER:TAG!']) {
    await assert.rejects(
      store.importFile(tinyPath, { name: bad }),
      code('E_INVALID_ARGUMENT', /invalid model name/),
    )
  }
  await assert.rejects(
    store.importFile(join(root, 'nope.gguf'), { name: 'x' }),
    code('E_NOT_FOUND', /nope\.gguf/),
  )
  await assert.rejects(store.resolve('never-pulled'), code('E_MODEL_NOT_FOUND', /never-pulled:latest/))
  await close()
})

test('files that are not whole GGUF models are refused and leave nothing behind', async () => {
  const { home, store, close } = await openStore()
  const badMagic = Buffer.from(tiny)
  badMagic.write('GGML', 0)
  const badVersion = Buffer.from(tiny)
  badVersion.writeUInt32LE(7, 4)
  const hugeCount = Buffer.from(tiny)
  hugeCount.writeBigUInt64LE(1n << 40n, 8)
  const cases: Array<[string, Buffer, RegExp]> = [
    ['text.gguf', Buffer.from('just some text, not a model\n'), /not a GGUF file/],
    ['half.gguf', tiny.subarray(0, tiny.length >> 1), /truncated/],
    ['header-only.gguf', tiny.subarray(0, 100), /truncated/],
    ['magic.gguf', badMagic, /not a GGUF file/],
    ['version.gguf', badVersion, /version 7/],
    ['count.gguf', hugeCount, /tensor count/],
  ]
  for (const [file, bytes, why] of cases) {
    await assert.rejects(
      store.importFile(writeFixture(file, bytes), { name: 'bad' }),
      code('E_INVALID_MODEL_FILE', why),
    )
    assert.deepEqual(store.list(), [], file)
    assert.deepEqual(entries(join(home, 'models', 'tmp')), [], file)
    assert.deepEqual(entries(join(home, 'models', 'blobs')), [], file)
  }
  await close()
})

test('a full disk during import is E_DISK_FULL and leaves nothing partial', async () => {
  // The first chunk really lands on disk; the second fails as a full disk would.
  const { home, store, close } = await openStore(undefined, {
    openWritable: async (path, flags) => {
      const file = await openWritableFile(path, flags)
      let writes = 0
      return {
        ...file,
        write: async (data, position) => {
          if (++writes > 1) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })
          return file.write(data, position)
        },
      }
    },
  })
  const big = writeFixture('two-chunks.gguf', Buffer.concat([tiny, Buffer.alloc(2 << 20)]))
  await assert.rejects(store.importFile(big, { name: 'full' }), code('E_DISK_FULL'))
  assert.deepEqual(store.list(), [])
  assert.deepEqual(entries(join(home, 'models', 'tmp')), [])
  assert.deepEqual(entries(join(home, 'models', 'blobs')), [])
  await close()
})

test('after a crash mid-import, start() removes the leftovers and the store is consistent', async () => {
  const { home, store, close } = await openStore()
  const kept = await store.importFile(tinyPath, { name: 'kept' })
  await close()

  // A real crash: a second process imports a big file and is SIGKILLed while copying.
  const big = writeFixture('big.gguf', Buffer.concat([tiny, Buffer.alloc(32 << 20)]))
  const url = (p: string) => JSON.stringify(pathToFileURL(join(import.meta.dirname, p)).href)
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { openDatabase } from ${url('../../src/store/database.ts')}
       import { createModelStore } from ${url('../../src/models/store.ts')}
       import { openWritableFile } from ${url('../../src/models/pull.ts')}
       import { silentLogger } from ${url('../../src/logger.ts')}
       const db = openDatabase(${JSON.stringify(join(home, 'substrate.db'))})
       const openWritable = async (path, flags) => {
         const file = await openWritableFile(path, flags)
         let n = 0
         return { ...file, write: async (data, pos) => {
           await file.write(data, pos)
           if (++n === 2) { console.log('writing'); await new Promise((r) => setTimeout(r, 60000)) }
         } }
       }
       const store = createModelStore({ db, logger: silentLogger }, { dir: ${JSON.stringify(join(home, 'models'))}, openWritable })
       await store.start()
       await store.importFile(${JSON.stringify(big)}, { name: 'big' })`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const [line] = (await once(child.stdout, 'data')) as [Buffer]
  assert.equal(line.toString().trim(), 'writing')
  child.kill('SIGKILL')
  await once(child, 'exit')
  assert.equal(entries(join(home, 'models', 'tmp')).length, 1, 'the crash left a partial copy')

  // What a crash between the other steps leaves: a blob no row names, a row whose blob is gone.
  const orphan = `sha256-${'0'.repeat(64)}`
  writeFileSync(join(home, 'models', 'blobs', orphan), 'orphan')
  const reopened = openDatabase(join(home, 'substrate.db'))
  const ghost = `sha256:${'1'.repeat(64)}`
  table.insertBlob(reopened, {
    digest: ghost,
    size: 5,
    path: `blobs/sha256-${'1'.repeat(64)}`,
    createdAt: '',
  })
  table.upsertModel(reopened, {
    name: 'ghost:latest',
    digest: ghost,
    size: 5,
    modifiedAt: '',
    detailsJson: '{}',
  })
  reopened.close()

  const restarted = await openStore(home)
  assert.deepEqual(entries(join(home, 'models', 'tmp')), [])
  assert.deepEqual(entries(join(home, 'models', 'blobs')), [`sha256-${kept.digest.slice(7)}`])
  assert.deepEqual(
    restarted.store.list().map((m) => m.name),
    ['kept:latest'],
  )
  assert.ok(
    restarted.logs.some((l) => l.includes('ghost:latest')),
    'dropping a model is logged with its name',
  )
  assert.deepEqual(readFileSync((await restarted.store.resolve('kept')).path), tiny)
  await restarted.close()
})

test('a built-in model is generated on first resolve, once, and reused afterwards', async () => {
  const { home, store, logs, close } = await openStore()
  const [a, b] = await Promise.all([store.resolve('substrate-tiny'), store.resolve('Substrate-Tiny:latest')])
  assert.equal(a.digest, b.digest)
  assert.equal(a.details.family, 'llama')
  assert.equal(logs.filter((l) => l.includes('generating built-in model')).length, 1)
  assert.deepEqual(entries(join(home, 'models', 'tmp')), [])
  await assert.rejects(store.resolve('substrate-tiny:other'), code('E_MODEL_NOT_FOUND'))
  await close()

  const again = await openStore(home)
  assert.equal((await again.store.resolve('substrate-tiny')).digest, a.digest)
  assert.equal(again.logs.filter((l) => l.includes('generating built-in model')).length, 0)
  await again.close()
})
