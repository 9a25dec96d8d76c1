import assert from 'node:assert/strict'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { createClient, readNdjson } from '../../src/api/client.ts'
import { SubstrateError } from '../../src/errors.ts'

// A stand-in daemon: each route answers the way the real one can, down to how bytes are
// split across writes, so the client's parsing is tested against the wire and not a mock.
type Handler = (req: IncomingMessage, res: ServerResponse) => Promise<void> | void
const routes: Record<string, Handler> = {
  'POST /api/generate': async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    // Splits fall mid-line, mid-key and inside the two bytes of "é".
    const body = Buffer.from(
      '{"model":"m","response":"caf\u00e9","done":false}\n{"model":"m","response":" ok","done":false}\n' +
        '{"model":"m","response":"","done":true,"eval_count":2,"eval_duration":1000}\n',
    )
    const cuts = [7, body.indexOf(0xc3) + 1, 60, 61, 100]
    let from = 0
    for (const cut of [...cuts, body.length]) {
      res.write(body.subarray(from, cut))
      from = cut
      await sleep(5)
    }
    res.end()
  },
  'POST /api/chat': async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    res.write('{"model":"m","message":{"role":"assistant","content":"Hel"},"done":false}\n')
    await sleep(5)
    res.end('{"error":"the runner crashed","code":"E_RUNNER_CRASHED"}\n')
  },
  'POST /api/show': (_req, res) => {
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end(
      JSON.stringify({ error: "model 'nope' not found", code: 'E_MODEL_NOT_FOUND', hint: 'pull it first' }),
    )
  },
  'GET /api/tags': (_req, res) => {
    res.writeHead(401, { 'content-type': 'text/html' })
    res.end('<html>proxy says no</html>')
  },
  'GET /substrate/v1/status': (req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ version: '0', id: req.headers.authorization ?? '', pid: 1, home: '/h' }))
  },
  'POST /api/pull': async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    res.write('{"status":"pulling","total":10,"completed":5}\n')
    // The last line without a trailing newline must still count.
    res.end('{"status":"success"}')
  },
  'POST /substrate/v1/models/import': async (req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    res.write('{"status":"copying","total":4,"completed":4}\n')
    res.end('{"status":"success","model":{"name":"x:latest","digest":"sha256:ab","size":4}}\n')
    req.resume()
  },
  'POST /api/slow': async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    res.write('{"response":"a","done":false}\n')
  },
}

let server: Server
let baseUrl = ''
before(async () => {
  server = createServer((req, res) => {
    const handler = routes[`${req.method} ${req.url}`]
    if (!handler) return void res.writeHead(500).end()
    void handler(req, res)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
after(() => {
  server.closeAllConnections()
  server.close()
})

test('an NDJSON stream split mid-line and mid-character arrives as whole chunks', async () => {
  const seen: string[] = []
  const final = await createClient({ baseUrl }).generate(
    { model: 'm', prompt: 'hi' },
    { onChunk: (c) => seen.push(c.response) },
  )
  assert.deepEqual(seen, ['café', ' ok', ''])
  assert.equal(final.done, true)
  assert.equal(final.eval_count, 2)
})

test('readNdjson yields the same objects however the bytes are cut', async () => {
  const text = '{"a":1}\n\n{"b":"\u00fc\u4e2d"}\n{"c":[1,2]}'
  const bytes = Buffer.from(text)
  for (let cut = 1; cut < bytes.length; cut++) {
    async function* pieces() {
      yield bytes.subarray(0, cut)
      yield bytes.subarray(cut)
    }
    const out: unknown[] = []
    for await (const v of readNdjson(pieces())) out.push(v)
    assert.deepEqual(out, [{ a: 1 }, { b: 'ü中' }, { c: [1, 2] }], `cut at ${cut}`)
  }
})

test('an error line in the middle of a stream throws a typed error with its code', async () => {
  const seen: string[] = []
  await assert.rejects(
    createClient({ baseUrl }).chat(
      { model: 'm', messages: [{ role: 'user', content: 'hi' }] },
      { onChunk: (c) => seen.push(c.message.content) },
    ),
    (err: unknown) => {
      assert.ok(err instanceof SubstrateError)
      assert.equal(err.code, 'E_RUNNER_CRASHED')
      assert.equal(err.message, 'the runner crashed')
      return true
    },
  )
  assert.deepEqual(seen, ['Hel'])
})

test('a non-2xx JSON error becomes a SubstrateError with its code, message and hint', async () => {
  await assert.rejects(createClient({ baseUrl }).show('nope'), (err: unknown) => {
    assert.ok(err instanceof SubstrateError)
    assert.equal(err.code, 'E_MODEL_NOT_FOUND')
    assert.equal(err.message, "model 'nope' not found")
    assert.equal(err.hint, 'pull it first')
    assert.equal(err.exitCode, 4)
    return true
  })
})

test('a non-2xx answer without a JSON error falls back to a code by status', async () => {
  await assert.rejects(createClient({ baseUrl }).tags(), { code: 'E_UNAUTHORIZED' })
})

test('the token is sent as a bearer header', async () => {
  const status = await createClient({ baseUrl, token: 's3cret' }).status()
  assert.equal(status.id, 'Bearer s3cret')
})

test('pull reports progress and accepts a last line without a newline', async () => {
  const events: unknown[] = []
  const last = await createClient({ baseUrl }).pull({ model: 'https://x/y.gguf' }, (e) => events.push(e))
  assert.deepEqual(events, [{ status: 'pulling', total: 10, completed: 5 }, { status: 'success' }])
  assert.deepEqual(last, { status: 'success' })
})

test('importModel reports progress and returns the stored model', async () => {
  const events: unknown[] = []
  const model = await createClient({ baseUrl }).importModel({ path: '/abs/x.gguf', name: 'x' }, (e) =>
    events.push(e),
  )
  assert.equal(model.name, 'x:latest')
  assert.deepEqual(events, [{ status: 'copying', total: 4, completed: 4 }])
})

test('aborting a stream mid-answer rejects with E_CANCELLED', async () => {
  // The injected fetch points generate at a route that sends one chunk and never ends.
  const slowFetch: typeof fetch = (input, init) =>
    fetch(String(input).replace('/api/generate', '/api/slow'), init)
  const controller = new AbortController()
  const client = createClient({ baseUrl, fetch: slowFetch })
  const pending = client.generate(
    { model: 'm', prompt: 'x' },
    { signal: controller.signal, onChunk: () => controller.abort() },
  )
  await assert.rejects(pending, { code: 'E_CANCELLED' })
})

test('a refused connection is E_DAEMON_UNREACHABLE with a hint to start the daemon', async () => {
  // Take a free port, then close it so nothing listens there.
  const probe = createServer().listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const { port } = probe.address() as AddressInfo
  await new Promise((resolve) => probe.close(resolve))
  await assert.rejects(createClient({ baseUrl: `http://127.0.0.1:${port}` }).version(), (err: unknown) => {
    assert.ok(err instanceof SubstrateError)
    assert.equal(err.code, 'E_DAEMON_UNREACHABLE')
    assert.match(err.hint ?? '', /substrate serve/)
    assert.equal(err.exitCode, 9)
    return true
  })
})
