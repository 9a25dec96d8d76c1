// Chunk manifests: what the store computes once per blob, and what a puller accepts from a peer.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { SubstrateError } from '../../src/errors.ts'
import { createLogger } from '../../src/logger.ts'
import { writeTinyModel } from '../../src/models/builtin.ts'
import {
  chunkMatches,
  computeManifest,
  decodeManifest,
  encodeManifest,
  manifestCid,
} from '../../src/models/chunk-manifest.ts'
import { createModelStore } from '../../src/models/store.ts'
import { openDatabase } from '../../src/store/database.ts'
import { getManifest } from '../../src/store/manifests-table.ts'

const root = mkdtempSync(join(tmpdir(), 'substrate-manifest-'))
after(() => rmSync(root, { recursive: true, force: true }))
const code = (expected: string) => (err: unknown) => {
  assert.ok(err instanceof SubstrateError, String(err))
  assert.equal(err.code, expected, err.message)
  return true
}

test('a manifest hashes every chunk, round-trips through DAG-CBOR and has a stable CID', async () => {
  const file = join(root, 'bytes.bin')
  const bytes = Buffer.alloc(300 * 1024, 7)
  bytes[200 * 1024] = 1
  writeFileSync(file, bytes)
  const m = await computeManifest(file, { chunkSize: 128 * 1024 })
  assert.equal(m.digest, `sha256:${createHash('sha256').update(bytes).digest('hex')}`)
  assert.equal(m.chunks.length, 3)
  assert.ok(chunkMatches(m, 2, bytes.subarray(256 * 1024)))
  assert.ok(!chunkMatches(m, 1, bytes.subarray(0, 128 * 1024)), 'chunk 1 differs from chunk 0')
  const encoded = encodeManifest(m)
  assert.deepEqual(decodeManifest(encoded, m.digest), m)
  assert.equal(
    await manifestCid(encoded),
    await manifestCid(encodeManifest(await computeManifest(file, { chunkSize: 128 * 1024 }))),
  )
})

test('a manifest from a peer is refused when malformed, inconsistent or for another model', async () => {
  const m = {
    digest: `sha256:${'a'.repeat(64)}`,
    size: 300 * 1024,
    chunkSize: 128 * 1024,
    chunks: [1, 2, 3].map(() => new Uint8Array(32)),
  }
  assert.throws(() => decodeManifest(encodeManifest(m), `sha256:${'b'.repeat(64)}`), code('E_PROTOCOL'))
  assert.throws(
    () => decodeManifest(encodeManifest({ ...m, chunks: m.chunks.slice(0, 2) })),
    code('E_PROTOCOL'),
  )
  assert.throws(() => decodeManifest(encodeManifest({ ...m, chunkSize: 1 })), code('E_PROTOCOL'))
  assert.throws(() => decodeManifest(dagCbor.encode({ v: 2, ...m })), code('E_PROTOCOL'))
  assert.throws(() => decodeManifest(new Uint8Array([0xff, 0x00])), code('E_PROTOCOL'))
})

test('the store computes a manifest when it stores a model, and drops it with the blob', async () => {
  const home = join(root, 'home')
  const db = openDatabase(join(home, 'substrate.db'))
  const store = createModelStore(
    { db, logger: createLogger({ level: 'error', write: () => {} }) },
    { dir: join(home, 'models') },
  )
  await store.start()
  try {
    const file = join(root, 'tiny.gguf')
    await writeTinyModel(file)
    const record = await store.importFile(file, { name: 'tiny' })
    const row = getManifest(db, record.digest)
    assert.ok(row, 'stored at import')
    const stored = await store.manifest(record.digest)
    assert.equal(stored?.cid, row.cid)
    assert.deepEqual(decodeManifest(stored.bytes, record.digest), await computeManifest(file))
    assert.equal(store.blobPath(record.digest), record.path)
    assert.deepEqual(readFileSync(store.blobPath(record.digest)!), readFileSync(file))
    await store.remove('tiny')
    assert.equal(getManifest(db, record.digest), undefined, 'gone with the blob')
    assert.equal(await store.manifest(record.digest), undefined)
    assert.equal(store.blobPath(record.digest), undefined)
  } finally {
    await store.stop()
    db.close()
  }
})
