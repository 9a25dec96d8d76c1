// Every kind of bad request gets a clear, typed error — and leaves the daemon serving.

import assert from 'node:assert/strict'
import { request } from 'node:http'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import { readNdjson, startTestNode, type TestNode } from '../helpers/node.ts'

async function post(
  url: string,
  path: string,
  body: string | Uint8Array,
  headers: Record<string, string> = {},
) {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    body: typeof body === 'string' ? body : new Uint8Array(body),
    headers: { 'content-type': 'application/json', ...headers },
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

describe('bad input to the HTTP API', () => {
  let t: TestNode
  before(async () => {
    t = await startTestNode({ runtime: { contextSize: 256 } })
  })
  after(async () => t.close())

  test('malformed JSON is a 400 E_INVALID_JSON', async () => {
    const r = await post(t.url, '/api/generate', '{"model": "substrate-tiny", "prompt": ')
    assert.equal(r.status, 400)
    assert.equal(r.body.code, 'E_INVALID_JSON')
  })

  test('a wrong field type is a 400 naming the field', async () => {
    const r = await post(t.url, '/api/generate', JSON.stringify({ model: 'substrate-tiny', prompt: 42 }))
    assert.equal(r.status, 400)
    assert.equal(r.body.code, 'E_BAD_REQUEST')
    assert.match(String(r.body.error), /prompt/)
  })

  test('an option of the wrong type is a 400 naming the option', async () => {
    const r = await post(
      t.url,
      '/api/chat',
      JSON.stringify({ model: 'substrate-tiny', messages: [], options: { temperature: 'hot' } }),
    )
    assert.equal(r.status, 400)
    assert.match(String(r.body.error), /options\.temperature/)
  })

  test('an unknown model is a 404 E_MODEL_NOT_FOUND on both APIs', async () => {
    const r = await post(t.url, '/api/generate', JSON.stringify({ model: 'nope:7b', prompt: 'hi' }))
    assert.equal(r.status, 404)
    assert.equal(r.body.code, 'E_MODEL_NOT_FOUND')
    const o = await post(
      t.url,
      '/v1/chat/completions',
      JSON.stringify({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
    )
    assert.equal(o.status, 404)
    assert.equal((o.body.error as { code: string }).code, 'E_MODEL_NOT_FOUND')
  })

  test('a prompt longer than the context is a 400 E_CONTEXT_OVERFLOW', async () => {
    const prompt = 'word '.repeat(2000)
    const r = await post(
      t.url,
      '/api/generate',
      JSON.stringify({ model: 'substrate-tiny', prompt, stream: false }),
    )
    assert.equal(r.status, 400)
    assert.equal(r.body.code, 'E_CONTEXT_OVERFLOW')
    assert.match(String(r.body.error), /context/)
  })

  test('a negative or absurd num_predict is a 400 E_INVALID_ARGUMENT', async () => {
    for (const n of [-5, 1e9]) {
      const r = await post(
        t.url,
        '/api/generate',
        JSON.stringify({ model: 'substrate-tiny', prompt: 'x', options: { num_predict: n } }),
      )
      assert.equal(r.status, 400, `num_predict ${n}`)
      assert.equal(r.body.code, 'E_INVALID_ARGUMENT')
    }
    const o = await post(
      t.url,
      '/v1/completions',
      JSON.stringify({ model: 'substrate-tiny', prompt: 'x', max_tokens: -1 }),
    )
    assert.equal(o.status, 400)
  })

  test('num_predict -1 means no limit and 0 means no tokens', async () => {
    const none = await post(
      t.url,
      '/api/generate',
      JSON.stringify({ model: 'substrate-tiny', prompt: 'x', stream: false, options: { num_predict: 0 } }),
    )
    assert.equal(none.status, 200)
    assert.equal(none.body.response, '')
    const all = await post(
      t.url,
      '/api/generate',
      JSON.stringify({ model: 'substrate-tiny', prompt: 'x', stream: false, options: { num_predict: -1 } }),
    )
    assert.equal(String(all.body.response).trim(), TINY_ANSWER)
  })

  test('invalid UTF-8 in the body is a 400 E_INVALID_UTF8', async () => {
    const bytes = Buffer.concat([
      Buffer.from('{"model":"substrate-tiny","prompt":"'),
      Buffer.from([0xc3, 0x28, 0xff]),
      Buffer.from('"}'),
    ])
    const r = await post(t.url, '/api/generate', bytes)
    assert.equal(r.status, 400)
    assert.equal(r.body.code, 'E_INVALID_UTF8')
  })

  test('an oversize body is a 413 E_PAYLOAD_TOO_LARGE', async () => {
    const r = await post(t.url, '/api/generate', Buffer.alloc(17 * 1024 * 1024, 0x20))
    assert.equal(r.status, 413)
    assert.equal(r.body.code, 'E_PAYLOAD_TOO_LARGE')
  })

  test('an unknown route is a 404 and a wrong method a 405', async () => {
    assert.equal((await fetch(`${t.url}/api/nothing`)).status, 404)
    assert.equal((await fetch(`${t.url}/api/generate`)).status, 405)
  })

  test('a client that disconnects mid-stream stops the generation in the runner', async () => {
    const body = JSON.stringify({
      model: 'substrate-tiny',
      prompt: 'loop ~',
      raw: true,
      options: { num_predict: 100000 },
    })
    let chunks = 0
    await new Promise<void>((resolve, reject) => {
      const req = request(
        `${t.url}/api/generate`,
        { method: 'POST', headers: { 'content-type': 'application/json' } },
        (res) => {
          res.on('data', () => {
            if (++chunks === 20) {
              req.destroy()
              resolve()
            }
          })
          res.on('error', () => {})
        },
      )
      req.on('error', (err) => (chunks >= 20 ? resolve() : reject(err)))
      req.end(body)
    })
    const deadline = Date.now() + 5000
    let active = 1
    while (Date.now() < deadline) {
      const runners = (await (await fetch(`${t.url}/substrate/v1/runners`)).json()) as {
        runners: Array<{ active: number }>
      }
      active = runners.runners.reduce((sum, r) => sum + r.active, 0)
      if (active === 0) break
      await sleep(50)
    }
    assert.equal(active, 0, 'the runner should have stopped generating for the vanished client')
    // and the daemon still serves
    const r = await post(
      t.url,
      '/api/generate',
      JSON.stringify({ model: 'substrate-tiny', prompt: 'hi', stream: false }),
    )
    assert.equal(String(r.body.response).trim(), TINY_ANSWER)
  })

  test('a runner crash answers the client with an error and the next request respawns it', async () => {
    const body = JSON.stringify({
      model: 'substrate-tiny',
      prompt: 'loop ~',
      raw: true,
      options: { num_predict: 100000 },
    })
    const res = await fetch(`${t.url}/api/generate`, { method: 'POST', body })
    const reader = res.body!.getReader()
    await reader.read()
    const [runner] = t.node.runtime.ps()
    assert.ok(runner)
    process.kill(runner.pid, 'SIGKILL')
    let text = ''
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      text += Buffer.from(value).toString()
    }
    const last = JSON.parse(text.trim().split('\n').at(-1)!) as { code?: string }
    assert.equal(last.code, 'E_RUNNER_CRASHED')
    const again = await readNdjson(
      await fetch(`${t.url}/api/generate`, {
        method: 'POST',
        body: JSON.stringify({ model: 'substrate-tiny', prompt: 'hi' }),
      }),
    )
    assert.equal(
      again
        .map((l) => l.response)
        .join('')
        .trim(),
      TINY_ANSWER,
    )
  })
})

describe('bearer token', () => {
  let t: TestNode
  before(async () => {
    t = await startTestNode({ api: { token: 'sekrit-token' } })
  })
  after(async () => t.close())

  test('with a token configured, requests without it are refused with 401', async () => {
    const none = await fetch(`${t.url}/api/tags`)
    assert.equal(none.status, 401)
    assert.equal(((await none.json()) as { code: string }).code, 'E_UNAUTHORIZED')
    const wrong = await fetch(`${t.url}/api/tags`, { headers: { authorization: 'Bearer nope' } })
    assert.equal(wrong.status, 401)
    const right = await fetch(`${t.url}/api/tags`, { headers: { authorization: 'Bearer sekrit-token' } })
    assert.equal(right.status, 200)
  })
})
