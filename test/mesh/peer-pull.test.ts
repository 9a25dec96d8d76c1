// Pulling a model from peers that misbehave: every holder is its own OS process on
// loopback; the puller is a real libp2p node in this process.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { peerIdFromString } from '@libp2p/peer-id'
import { CHUNK_SIZE } from '../../src/models/chunk-manifest.ts'
import { partialPaths } from '../../src/models/pull.ts'
import { openWritableFile } from '../../src/models/writable.ts'
import { rejectsWith } from './helpers.ts'
import { type Holder, randomFile, spawnHolder, startPuller, type TestPuller } from './transfer-helpers.ts'

const CHUNKS = 6
const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

describe('pulling a model from peers', () => {
  let dir: string
  let file: string
  let original: Buffer
  let digest: string
  const holders: Holder[] = []
  const pullers: TestPuller[] = []
  const holder = async (config: Parameters<typeof spawnHolder>[0]) => {
    const h = await spawnHolder(config)
    holders.push(h)
    return h
  }
  const puller = async (...args: Parameters<typeof startPuller>) => {
    const p = await startPuller(...args)
    pullers.push(p)
    return p
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'substrate-peer-pull-'))
    file = join(dir, 'model.bin')
    await randomFile(file, CHUNKS * CHUNK_SIZE - 12_345)
    original = await readFile(file)
    digest = sha256(original)
  })
  after(async () => {
    for (const h of holders) h.kill()
    await Promise.all(pullers.map((p) => p.stop()))
    await rm(dir, { recursive: true, force: true })
  })

  test('a holder that sends a corrupt chunk is dropped and banned; the chunk comes from another', async (t) => {
    let at = performance.now()
    const honest = await holder({ file })
    const corrupt = await holder({ file, mode: 'corrupt' })
    const p = await puller(join(dir, 'corrupt'), [corrupt, honest])
    t.diagnostic(`setup ${(performance.now() - at).toFixed(0)} ms`)
    at = performance.now()
    const record = await p.pull(digest)
    t.diagnostic(`pull ${(performance.now() - at).toFixed(0)} ms`)
    assert.deepEqual(await readFile(record.path), original)
    const stats = p.puller.lastStats()!
    assert.equal(stats.chunksFrom[corrupt.id], undefined, 'no chunk from the corrupt holder is kept')
    assert.equal(stats.chunksFrom[honest.id], CHUNKS)
    assert.match(stats.dropped[corrupt.id] ?? '', /does not match/)
    assert.ok(p.puller.banned().has(corrupt.id))
    assert.ok(!p.puller.banned().has(honest.id))
  })

  test('a holder that stalls is dropped after the stall timeout; the pull completes elsewhere', async () => {
    // Slow enough that the stall timeout fires before the end game would route around it.
    const honest = await holder({ file, bytesPerSecond: CHUNK_SIZE / 2 })
    const staller = await holder({ file, mode: 'stall' })
    const p = await puller(join(dir, 'stall'), [staller, honest], { stallTimeoutMs: 4_000 })
    const started = performance.now()
    const record = await p.pull(digest)
    assert.deepEqual(await readFile(record.path), original)
    const stats = p.puller.lastStats()!
    assert.match(stats.dropped[staller.id] ?? '', /in time|stalled/)
    assert.ok(p.puller.banned().has(staller.id))
    assert.ok(performance.now() - started < 40_000)
  })

  test('when every holder vanishes mid-transfer, a later pull fetches only the missing chunks', async () => {
    // Slow enough that the chunks still on their way (all of them are requested at once) take
    // seconds longer than the first two: the kill lands mid-transfer even on a loaded machine.
    const slow = [
      await holder({ file, bytesPerSecond: CHUNK_SIZE / 2 }),
      await holder({ file, bytesPerSecond: CHUNK_SIZE / 2 }),
    ]
    const sub = join(dir, 'vanish')
    const first = await puller(sub, slow)
    let killed = false
    await assert.rejects(
      first.pull(digest, {
        onProgress(ev) {
          // Kill both once at least two chunks are safely on disk.
          if (!killed && (ev.completed ?? 0) >= 2 * CHUNK_SIZE) {
            killed = true
            for (const h of slow) h.kill()
          }
        },
      }),
      rejectsWith('E_PEER_GONE'),
    )
    const keptChunks = Object.values(first.puller.lastStats()!.chunksFrom).reduce((a, b) => a + b, 0)
    assert.ok(keptChunks >= 2, `kept ${keptChunks} chunks`)

    const fresh = await holder({ file })
    const second = await puller(sub, [fresh])
    const record = await second.pull(digest)
    assert.deepEqual(await readFile(record.path), original)
    const stats = second.puller.lastStats()!
    assert.equal(stats.resumedChunks, keptChunks, 'every chunk written before the crash is reused')
    assert.equal(stats.chunksFrom[fresh.id], CHUNKS - keptChunks, 'only the missing chunks are fetched')
    assert.deepEqual(await readdir(join(sub, 'tmp')), [basename(record.path)], 'the resume state is gone')
  })

  test('a connection closed under a pull is dialled again once; the pull completes from the same holder', async () => {
    const only = await holder({ file, bytesPerSecond: CHUNK_SIZE })
    const p = await puller(join(dir, 'hangup'), [only])
    let closed = false
    const record = await p.pull(digest, {
      onProgress(ev) {
        if (!closed && (ev.completed ?? 0) >= CHUNK_SIZE) {
          closed = true
          void p.mesh.libp2p.hangUp(peerIdFromString(only.id))
        }
      },
    })
    assert.ok(closed)
    assert.deepEqual(await readFile(record.path), original)
    const stats = p.puller.lastStats()!
    assert.equal(stats.chunksFrom[only.id], CHUNKS)
    assert.deepEqual(stats.reopened, { [only.id]: 1 }, 'the stream broke and was opened again')
    assert.deepEqual(stats.dropped, {}, 'the holder is not counted as dropped once its new stream served')
    assert.ok(!p.puller.banned().has(only.id))
  })

  test('a resume reuses chunks written but not yet listed in the state file, and re-fetches a torn one', async () => {
    const honest = await holder({ file })
    const sub = join(dir, 'unlisted')
    const p = await puller(sub, [honest])
    // The state file of a process that died right after writing chunks 1..5, before listing them.
    const done = await p.puller.fetch(digest, { tmpDir: p.tmpDir })
    const { infoPath } = partialPaths(p.tmpDir, `substrate-peers:${digest}`)
    const state = JSON.parse(await readFile(infoPath, 'utf8')) as { written: number[] }
    assert.equal(state.written.length, CHUNKS)
    await writeFile(infoPath, JSON.stringify({ ...state, written: [0] }))
    // ...and chunk 3 torn: half of it never reached the disk.
    const torn = await open(done.path, 'r+')
    await torn.write(Buffer.alloc(CHUNK_SIZE / 2), 0, CHUNK_SIZE / 2, 3 * CHUNK_SIZE)
    await torn.close()
    const record = await p.pull(digest)
    assert.deepEqual(await readFile(record.path), original)
    const stats = p.puller.lastStats()!
    assert.equal(stats.resumedChunks, CHUNKS - 1, 'every intact chunk on disk is reused')
    assert.equal(stats.chunksFrom[honest.id], 1, 'only the torn chunk is fetched again')
  })

  test('a manifest whose chunks do not add up to the file hash stores nothing and bans its senders', async () => {
    const other = join(dir, 'other.bin')
    await randomFile(other, 3 * CHUNK_SIZE)
    const liar = await holder({ file: other, mode: 'lie', lieAbout: digest })
    const sub = join(dir, 'lie')
    const p = await puller(sub, [liar])
    await assert.rejects(p.pull(digest), rejectsWith('E_CHECKSUM_MISMATCH'))
    assert.ok(p.puller.banned().has(liar.id))
    assert.deepEqual(await readdir(join(sub, 'tmp')), [])
  })

  test('a full disk fails with E_DISK_FULL and leaves no partial file behind', async () => {
    const honest = await holder({ file })
    const sub = join(dir, 'full')
    let written = 0
    const p = await puller(sub, [honest], {}, async (path, flags) => {
      const real = await openWritableFile(path, flags)
      return {
        ...real,
        async write(data, position) {
          written += data.length
          if (written > 2 * CHUNK_SIZE)
            throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })
          return real.write(data, position)
        },
      }
    })
    await assert.rejects(p.pull(digest), rejectsWith('E_DISK_FULL'))
    assert.deepEqual(await readdir(join(sub, 'tmp')), [])
  })
})
