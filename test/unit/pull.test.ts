import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { SubstrateError } from '../../src/errors.ts'
import { silentLogger } from '../../src/logger.ts'
import { writeTinyModel } from '../../src/models/builtin.ts'
import { downloadFile } from '../../src/models/pull.ts'
import type { ProgressEvent } from '../../src/models/types.ts'
import { openWritableFile } from '../../src/models/writable.ts'
import { openTestStore, sendFile, serve } from '../helpers/http-server.ts'

const root = mkdtempSync(join(tmpdir(), 'substrate-pull-'))
let tiny: Buffer
let tinySha: string
before(async () => {
  await writeTinyModel(join(root, 'tiny.gguf'))
  tiny = readFileSync(join(root, 'tiny.gguf'))
  tinySha = createHash('sha256').update(tiny).digest('hex')
})
after(() => rmSync(root, { recursive: true, force: true }))

const openStore = () => openTestStore(root)

function recorder() {
  const events: ProgressEvent[] = []
  return {
    events,
    onProgress: (e: ProgressEvent) => events.push(e),
    assertMonotonic() {
      const completed = events.filter((e) => e.status.startsWith('pulling ')).map((e) => e.completed ?? -1)
      assert.ok(completed.length > 0, 'some download progress was reported')
      assert.deepEqual(
        completed,
        [...completed].sort((a, b) => a - b),
      )
      assert.equal(completed.at(-1), tiny.length)
      assert.equal(events.at(-1)?.status, 'success')
    },
  }
}

const code = (expected: string, message?: RegExp) => (err: unknown) => {
  assert.ok(err instanceof SubstrateError, `expected a SubstrateError, got ${String(err)}`)
  assert.equal(err.code, expected, err.message)
  if (message) assert.match(err.message, message)
  return true
}

test('a pull downloads, verifies and imports the model under the URL file name', async () => {
  const server = await serve((req, res) => sendFile(req, res, tiny))
  const { store, tmp, close } = await openStore()
  const progress = recorder()
  const record = await store.pull(server.url('/files/Tiny-Model.gguf'), {
    sha256: `sha256:${tinySha}`,
    ...progress,
  })
  assert.equal(record.name, 'tiny-model:latest')
  assert.equal(record.digest, `sha256:${tinySha}`)
  assert.equal(record.details.contextLength, 4096)
  progress.assertMonotonic()
  assert.deepEqual(tmp(), [])
  server.close()
  await close()
})

test('a connection cut mid-body is resumed with a Range request for the rest', async () => {
  const server = await serve((req, res, nth) => sendFile(req, res, tiny, nth === 1 ? { cutAt: 100_000 } : {}))
  const { store, tmp, close } = await openStore()
  const progress = recorder()
  const record = await store.pull(server.url('/tiny.gguf'), { ...progress })
  assert.equal(record.digest, `sha256:${tinySha}`)
  assert.equal(server.seen.length, 2)
  assert.equal(server.seen[0]?.range, undefined)
  const start = Number(/^bytes=(\d+)-$/.exec(server.seen[1]?.range ?? '')?.[1])
  assert.ok(start > 0 && start <= 100_000, `resumed at ${server.seen[1]?.range}`)
  assert.equal(server.seen[1]?.ifRange, '"v1"')
  progress.assertMonotonic()
  assert.deepEqual(tmp(), [])
  server.close()
  await close()
})

test('a server that ignores Range makes the download restart cleanly from the start', async () => {
  const server = await serve((req, res, nth) =>
    sendFile(req, res, tiny, { ignoreRange: true, ...(nth === 1 ? { cutAt: 200_000 } : {}) }),
  )
  const { store, close } = await openStore()
  const progress = recorder()
  const record = await store.pull(server.url('/tiny.gguf'), { ...progress })
  assert.equal(record.digest, `sha256:${tinySha}`)
  assert.ok(server.seen[1]?.range !== undefined)
  progress.assertMonotonic()
  server.close()
  await close()
})

test('a server whose body is shorter than its Content-Length fails with E_DOWNLOAD_FAILED', async () => {
  // The file really is 50 000 bytes; the server claims the tiny model's length.
  const short = tiny.subarray(0, 50_000)
  const liar = await serve((req, res) => {
    if (req.headers.range !== undefined) {
      res.writeHead(416, { 'content-range': `bytes */${short.length}` }).end()
      return
    }
    res.writeHead(200, { 'content-length': String(tiny.length) })
    res.write(short, () => res.destroy())
  })
  const { store, close } = await openStore()
  const url = liar.url('/tiny.gguf')
  await assert.rejects(store.pull(url, {}), code('E_DOWNLOAD_FAILED', new RegExp(url)))
  assert.equal(liar.seen.length, 4, 'the first attempt and three retries, then it gives up')
  assert.deepEqual(store.list(), [])
  liar.close()
  await close()
})

test('a server that sends more than its Content-Length gets the bytes it declared, then a checksum refusal', async () => {
  // It claims 50 000 bytes and sends the whole model: only the declared bytes count.
  const liar = await serve((_req, res) => {
    res.writeHead(200, { 'content-length': '50000' })
    res.end(tiny)
  })
  const { store, tmp, close } = await openStore()
  await assert.rejects(
    store.pull(liar.url('/tiny.gguf'), { sha256: tinySha }),
    code('E_CHECKSUM_MISMATCH', /expected/),
  )
  // Without a published digest the GGUF check refuses the torn file instead.
  await assert.rejects(store.pull(liar.url('/tiny.gguf'), {}), code('E_INVALID_MODEL_FILE'))
  assert.deepEqual(store.list(), [])
  assert.deepEqual(tmp(), [])
  liar.close()
  await close()
})

test('a full disk during a pull is E_DISK_FULL, and nothing is half-imported or kept', async () => {
  const big = Buffer.concat([tiny, Buffer.alloc(4 << 20)])
  const server = await serve((req, res) => sendFile(req, res, big))
  let written = 0
  const { store, tmp, home, close } = await openTestStore(root, {
    openWritable: async (path, flags) => {
      const file = await openWritableFile(path, flags)
      const fill = (bytes: number) => {
        written += bytes
        if (written > 1 << 20) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })
      }
      return {
        ...file,
        write: async (data, position) => {
          fill(data.length)
          return file.write(data, position)
        },
        writev: async (data, position) => {
          fill(data.reduce((sum, d) => sum + d.length, 0))
          return file.writev!(data, position)
        },
      }
    },
  })
  await assert.rejects(store.pull(server.url('/big.gguf'), {}), code('E_DISK_FULL')).finally(server.close)
  assert.equal(server.seen.length, 1, 'a full disk is not retried')
  assert.deepEqual(store.list(), [])
  assert.deepEqual(tmp(), [])
  assert.deepEqual(readdirSync(join(home, 'models', 'blobs')), [])
  await close()
})

test('an interrupted pull resumes in a later call', async () => {
  let honest = false
  const server = await serve((req, res) => sendFile(req, res, tiny, honest ? {} : { cutAt: 50_000 }))
  const { store, tmp, close } = await openStore()
  const url = server.url('/tiny.gguf')
  await assert.rejects(
    store.pull(url, {}),
    code('E_DOWNLOAD_FAILED', /stopped at byte 50000.*can be resumed/),
  )
  assert.equal(tmp().length, 2, 'the partial and its info file stay for the next pull')
  honest = true
  const before = server.seen.length
  const record = await store.pull(url, {})
  assert.equal(record.digest, `sha256:${tinySha}`)
  assert.equal(server.seen[before]?.range, 'bytes=50000-')
  assert.deepEqual(tmp(), [])
  server.close()
  await close()
})

test('a sha256 mismatch is E_CHECKSUM_MISMATCH and nothing is imported or kept', async () => {
  const server = await serve((req, res) => sendFile(req, res, tiny))
  const { store, tmp, close } = await openStore()
  const wrong = 'ab'.repeat(32)
  await assert.rejects(
    store.pull(server.url('/tiny.gguf'), { sha256: wrong }),
    code('E_CHECKSUM_MISMATCH', /expected abab/),
  )
  assert.deepEqual(store.list(), [])
  assert.deepEqual(tmp(), [])
  await assert.rejects(store.pull(server.url('/tiny.gguf'), { sha256: 'xyz' }), code('E_INVALID_ARGUMENT'))
  server.close()
  await close()
})

test('a 404 is a clear error naming the URL, without retries', async () => {
  const server = await serve((_req, res) => res.writeHead(404).end('no'))
  const { store, tmp, close } = await openStore()
  const url = server.url('/missing.gguf')
  await assert.rejects(store.pull(url, {}), code('E_DOWNLOAD_FAILED', new RegExp(`${url}.*404`)))
  assert.equal(server.seen.length, 1)
  assert.deepEqual(tmp(), [])
  server.close()
  await close()
})

test('redirects are followed, up to a limit', async () => {
  const server = await serve((req, res) => {
    if (req.url === '/latest') res.writeHead(302, { location: '/v1/tiny.gguf' }).end()
    else if (req.url === '/loop') res.writeHead(301, { location: '/loop' }).end()
    else sendFile(req, res, tiny)
  })
  const { store, close } = await openStore()
  assert.equal((await store.pull(server.url('/latest'), { name: 'tiny' })).digest, `sha256:${tinySha}`)
  await assert.rejects(
    store.pull(server.url('/loop'), { name: 'x' }),
    code('E_DOWNLOAD_FAILED', /redirected/),
  )
  server.close()
  await close()
})

test('transient server errors are retried; a downloaded non-GGUF file is refused and removed', async () => {
  const junk = Buffer.from('<html>not a model</html>')
  const server = await serve((req, res, nth) => {
    if (nth === 1) res.writeHead(503).end()
    else sendFile(req, res, req.url === '/junk.gguf' ? junk : tiny)
  })
  const { store, tmp, close } = await openStore()
  assert.equal((await store.pull(server.url('/tiny.gguf'), {})).digest, `sha256:${tinySha}`)
  await assert.rejects(store.pull(server.url('/junk.gguf'), {}), code('E_INVALID_MODEL_FILE', /junk/))
  assert.deepEqual(
    store.list().map((m) => m.name),
    ['tiny:latest'],
  )
  assert.deepEqual(tmp(), [])
  server.close()
  await close()
})

test('a pull of content already stored makes no request; a cancelled pull is E_CANCELLED', async () => {
  const server = await serve((req, res) => sendFile(req, res, tiny))
  const { store, close } = await openStore()
  await store.importFile(join(root, 'tiny.gguf'), { name: 'local' })
  const record = await store.pull(server.url('/tiny.gguf'), { name: 'alias', sha256: tinySha })
  assert.equal(record.digest, `sha256:${tinySha}`)
  assert.equal(server.seen.length, 0)
  const controller = new AbortController()
  controller.abort()
  await assert.rejects(
    store.pull(server.url('/other.gguf'), { signal: controller.signal }),
    code('E_CANCELLED'),
  )
  server.close()
  await close()
})

test('a large chunked body downloads whole while the disk is slow: reading waits, few writes in flight', async () => {
  const payload = randomBytes(20 << 20)
  const server = await serve((_req, res) => {
    res.writeHead(200) // no Content-Length: chunked, the size is unknown until the end
    let at = 0
    const next = () => {
      while (at < payload.length) {
        const piece = payload.subarray(at, at + (1 << 20))
        at += piece.length
        if (!res.write(piece)) return void res.once('drain', next)
      }
      res.end()
    }
    next()
  })
  const tmpDir = mkdtempSync(join(root, 'slow-'))
  let inFlight = 0
  let most = 0
  const file = await downloadFile(
    server.url('/big.bin'),
    {
      tmpDir,
      logger: silentLogger,
      openWritable: async (path, flags) => {
        const inner = await openWritableFile(path, flags)
        return {
          ...inner,
          write: async (data, position) => {
            most = Math.max(most, ++inFlight)
            await sleep(30)
            await inner.write(data, position)
            inFlight--
          },
        }
      },
    },
    { sha256: createHash('sha256').update(payload).digest('hex') },
  )
  server.close()
  assert.equal(file.size, payload.length)
  assert.ok(readFileSync(file.path).equals(payload))
  assert.ok(most >= 2 && most <= 3, `${most} writes were in flight at once`)
})

test('a body of unknown size is cut at the quota while it streams, and nothing is kept', async () => {
  const server = await serve((_req, res) => {
    res.writeHead(200)
    res.end(tiny) // chunked: no size to refuse at the headers
  })
  const { store, tmp, close } = await openTestStore(root, { policy: { quotaBytes: tiny.length - 1 } })
  await assert.rejects(
    store.pull(server.url('/tiny.gguf'), {}),
    code('E_QUOTA_EXCEEDED', /larger than the \d+ bytes the model store quota has left/),
  )
  assert.equal(server.seen.length, 1, 'a quota refusal is not retried')
  assert.deepEqual(tmp(), [])
  server.close()
  await close()
})
