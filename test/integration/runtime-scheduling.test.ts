// The scheduler's promises about runner lifetimes: keep_alive is honoured, idle models are
// evicted least-recently-used, concurrent requests share one runner, and an explicit empty
// request loads or unloads a model the way Ollama's does.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import { readNdjson, startTestNode, type TestNode } from '../helpers/node.ts'

async function generate(url: string, body: Record<string, unknown>) {
  const res = await fetch(`${url}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({ stream: false, ...body }),
  })
  return (await res.json()) as Record<string, unknown>
}
const loaded = async (url: string) =>
  ((await (await fetch(`${url}/api/ps`)).json()) as { models: Array<{ name: string; expires_at: string }> })
    .models

async function waitFor(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(50)
  }
  return check()
}

describe('runner scheduling', () => {
  let t: TestNode
  before(async () => {
    t = await startTestNode({ runtime: { maxLoadedModels: 1, keepAlive: '5m' } })
    // A second name for the same file is the same model; a differently sized context of the
    // bench model would be heavier, so make a second tiny model with a different context length.
    const { writeTinyModel } = await import('../../src/models/builtin.ts')
    const path = `${t.home}/other-tiny.gguf`
    await writeTinyModel(path, { contextLength: 2048 })
    const res = await fetch(`${t.url}/substrate/v1/models/import`, {
      method: 'POST',
      body: JSON.stringify({ path, name: 'other-tiny', stream: false }),
    })
    assert.equal(res.status, 200)
  })
  after(async () => t.close())

  test('keep_alive 0 unloads the model as soon as the request ends', async () => {
    const r = await generate(t.url, { model: 'substrate-tiny', prompt: 'hi', keep_alive: 0 })
    assert.equal(String(r.response).trim(), TINY_ANSWER)
    assert.ok(await waitFor(async () => (await loaded(t.url)).length === 0, 3000), 'model should be unloaded')
  })

  test('a short keep_alive unloads after that time, not before', async () => {
    await generate(t.url, { model: 'substrate-tiny', prompt: 'hi', keep_alive: '1s' })
    const ps = await loaded(t.url)
    assert.equal(ps.length, 1)
    const expires = Date.parse(ps[0]!.expires_at) - Date.now()
    assert.ok(expires > 0 && expires <= 1000, `expires in ${expires} ms`)
    assert.ok(
      await waitFor(async () => (await loaded(t.url)).length === 0, 4000),
      'model should unload after ~1 s',
    )
  })

  test('an empty prompt loads the model and keep_alive 0 with an empty prompt unloads it', async () => {
    const load = await generate(t.url, { model: 'substrate-tiny' })
    assert.equal(load.done_reason, 'load')
    assert.equal((await loaded(t.url)).length, 1)
    const unload = await generate(t.url, { model: 'substrate-tiny', keep_alive: 0 })
    assert.equal(unload.done_reason, 'unload')
    assert.equal((await loaded(t.url)).length, 0)
  })

  test('beyond maxLoadedModels the least recently used idle model is evicted', async () => {
    await generate(t.url, { model: 'substrate-tiny', prompt: 'hi' })
    await generate(t.url, { model: 'other-tiny', prompt: 'hi' })
    const ps = await loaded(t.url)
    assert.deepEqual(
      ps.map((m) => m.name),
      ['other-tiny:latest'],
    )
  })

  test('concurrent requests on one model share one runner and all complete', async () => {
    const before = t.node.runtime.ps()
    const bodies = Array.from({ length: 6 }, () =>
      fetch(`${t.url}/api/chat`, {
        method: 'POST',
        body: JSON.stringify({ model: 'other-tiny', messages: [{ role: 'user', content: 'hello' }] }),
      }).then(readNdjson),
    )
    const answers = (await Promise.all(bodies)).map((lines) =>
      lines
        .map((l) => (l.message as { content: string } | undefined)?.content ?? '')
        .join('')
        .trim(),
    )
    assert.deepEqual(answers, Array(6).fill(TINY_ANSWER))
    const afterPs = t.node.runtime.ps()
    assert.equal(afterPs.length, 1)
    assert.equal(afterPs[0]!.pid, before[0]!.pid, 'the same runner served them all')
  })
})

describe('the stream window (runtime.streamWindow)', () => {
  /** Chunks of one streamed answer, and how long the stream took. */
  async function chunksOf(url: string) {
    const started = performance.now()
    const res = await fetch(`${url}/api/generate`, {
      method: 'POST',
      body: JSON.stringify({ model: 'substrate-tiny', prompt: 'hi', options: { temperature: 0 } }),
    })
    const lines = await readNdjson(res)
    const tokens = lines.filter((l) => l.done !== true)
    const final = lines.at(-1) as { done?: boolean; eval_count?: number }
    return {
      chunks: tokens.length,
      text: tokens.map((l) => String(l.response)).join(''),
      evalCount: final.eval_count ?? 0,
      ms: performance.now() - started,
    }
  }

  test('joins the tokens that follow the first within the window, and loses none', async () => {
    const each = await startTestNode({ runtime: { streamWindow: 0 } })
    const joined = await startTestNode({ runtime: { streamWindow: '1s' } })
    try {
      const a = await chunksOf(each.url)
      const b = await chunksOf(joined.url)
      assert.equal(b.text, a.text)
      assert.equal(b.text.trim(), TINY_ANSWER)
      assert.equal(b.evalCount, a.evalCount)
      assert.ok(a.chunks > 5, `window 0: a chunk per token or few, got ${a.chunks} for ${a.evalCount} tokens`)
      // the first token alone, then at most one chunk per second of generation
      const most = 2 + Math.ceil(b.ms / 1000)
      assert.ok(b.chunks <= most, `window 1s: ${b.chunks} chunks in ${Math.round(b.ms)} ms`)
    } finally {
      await Promise.all([each.close(), joined.close()])
    }
  })
})
