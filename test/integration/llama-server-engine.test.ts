// The llama-server engine (src/runtime/engine.ts): the runner drives llama.cpp's own server,
// built natively from node-llama-cpp's bundled source, inside the default sandbox. The
// engine must be a drop-in: greedy answers, prompt token counts and spot-check scoring equal
// node-llama-cpp's for the same model; cancel frees the slot; a prompt over the context is a
// typed error; a server that dies mid-stream reaches the client as a typed error and the next
// request gets a fresh runner. The build is cached per machine (`npm test` builds it first
// on a fresh one; run alone, this file builds it in `before`).

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { silentLogger } from '../../src/logger.ts'
import { buildEngine } from '../../src/runtime/engine.ts'
import { readNdjson, runCli, startTestNode, type TestNode } from '../helpers/node.ts'
import { argvOf, descendants, uidOf } from '../helpers/processes.ts'

/** llama-server itself (bwrap's argv names its path too, so match the program, not any argument) */
const isServer = (pid: number) => argvOf(pid)[0]?.endsWith('/llama-server') === true

async function generate(t: TestNode, body: Record<string, unknown>) {
  const res = await fetch(`${t.url}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({ model: 'substrate-tiny', stream: false, ...body }),
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

async function chat(t: TestNode, body: Record<string, unknown>) {
  const res = await fetch(`${t.url}/api/chat`, {
    method: 'POST',
    body: JSON.stringify({ model: 'substrate-tiny', stream: false, ...body }),
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

/** A streamed generation that never ends on its own: the tiny model repeats "~" after this prompt. */
function endlessStream(t: TestNode, signal?: AbortSignal): Promise<Response> {
  return fetch(`${t.url}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({
      model: 'substrate-tiny',
      prompt: 'loop ~',
      raw: true,
      options: { num_predict: 100_000 },
    }),
    signal,
  })
}

async function runnerPid(t: TestNode): Promise<number> {
  const { runners } = (await (await fetch(`${t.url}/substrate/v1/runners`)).json()) as {
    runners: Array<{ pid: number }>
  }
  const pid = runners[0]?.pid
  assert.ok(pid !== undefined && pid > 0, 'a runner is loaded')
  return pid
}

describe('the llama-server engine', { timeout: 2_400_000 }, () => {
  let server: TestNode
  let plain: TestNode
  before(
    async () => {
      await buildEngine({ logger: silentLogger, nice: true })
      const runtime = { threads: 1, parallel: 2, contextSize: 2048 }
      ;[server, plain] = await Promise.all([
        startTestNode({ runtime: { ...runtime, engine: 'llama-server' } }),
        startTestNode({ runtime: { ...runtime, engine: 'node-llama-cpp' } }),
      ])
    },
    { timeout: 2_400_000 },
  )
  after(async () => Promise.all([server?.close(), plain?.close()]))

  test('runs inside the sandbox as the runner’s child and answers like node-llama-cpp, greedy', async () => {
    const options = { temperature: 0, num_predict: 24, seed: 7 }
    const prompts = ['Once upon a time', 'hi', ' the quick brown fox jumps']
    for (const [prompt, raw] of prompts.flatMap((p) => [[p, false] as const, [p, true] as const])) {
      const [a, b] = await Promise.all([
        generate(server, { prompt, raw, options }),
        generate(plain, { prompt, raw, options }),
      ])
      assert.equal(a.status, 200, JSON.stringify(a.body))
      assert.equal(a.body.response, b.body.response, `answer to ${JSON.stringify(prompt)}`)
      assert.equal(a.body.eval_count, b.body.eval_count, 'the same output token count')
      assert.equal(a.body.done_reason, b.body.done_reason)
      // node-llama-cpp's token meter leaves out the prompt tokens it evaluates with the first
      // step; the server engine reports every prompt token (what the spot check below rebuilds)
      assert.ok(Number(a.body.prompt_eval_count) >= Number(b.body.prompt_eval_count))
    }
    const messages = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Say something.' },
    ]
    const [a, b] = await Promise.all([
      chat(server, { messages, options }),
      chat(plain, { messages, options }),
    ])
    assert.equal(a.status, 200, JSON.stringify(a.body))
    assert.deepEqual(a.body.message, b.body.message, 'the same chat answer through the same template')
    assert.equal(a.body.eval_count, b.body.eval_count)

    const { runners } = (await (await fetch(`${server.url}/substrate/v1/runners`)).json()) as {
      runners: Array<{ buildType: string }>
    }
    assert.equal(runners[0]?.buildType, 'llama-server', 'the runner reports its engine')
    const ps = await runCli(server, ['ps'])
    assert.equal(ps.code, 0, ps.err)
    assert.match(ps.out, /ENGINE/)
    assert.match(ps.out, /substrate-tiny\S*\s.*llama-server ×1/, ps.out)
    const tree = [await runnerPid(server)].flatMap((p) => [p, ...descendants(p)])
    const llama = tree.find(isServer)
    assert.ok(llama !== undefined, 'llama-server runs under the runner, in its sandbox')
    assert.ok(
      argvOf(llama).includes('--host') && argvOf(llama).some((a) => a.endsWith('.sock')),
      'on a unix socket',
    )
    assert.notEqual(uidOf(llama), 0, 'not as root')
  })

  test('streams, and concurrent requests share the runner’s slots', async () => {
    const options = { temperature: 0, num_predict: 16 }
    const res = await fetch(`${server.url}/api/generate`, {
      method: 'POST',
      body: JSON.stringify({ model: 'substrate-tiny', prompt: 'Once upon a time', options }),
    })
    const lines = await readNdjson(res)
    assert.ok(lines.length >= 3, 'several chunks')
    const streamed = lines.map((l) => String(l.response ?? '')).join('')
    const all = await Promise.all(
      [1, 2, 3, 4].map(() => generate(server, { prompt: 'Once upon a time', options })),
    )
    for (const r of all) assert.equal(r.body.response, streamed, 'four at once on two slots: the same answer')
  })

  test('a cancelled stream frees its slot: the next requests are served at once', async () => {
    const ctrl = new AbortController()
    const res = await endlessStream(server, ctrl.signal)
    const reader = res.body!.getReader()
    await reader.read()
    ctrl.abort()
    // two slots: if the aborted generation kept its slot, one of these would queue behind it forever
    const started = performance.now()
    const both = await Promise.all(
      [1, 2].map(() => generate(server, { prompt: 'hi', options: { num_predict: 8 } })),
    )
    for (const r of both) assert.equal(r.status, 200)
    assert.ok(performance.now() - started < 60_000)
  })

  test('a prompt longer than the context is a typed error, from either engine', async () => {
    const prompt = 'word '.repeat(5000)
    for (const t of [server, plain]) {
      const r = await generate(t, { prompt })
      assert.equal(r.status, 400, JSON.stringify(r.body))
      assert.equal(r.body.code, 'E_CONTEXT_OVERFLOW')
    }
  })

  test('spot-check scoring runs on the same runner and agrees with the generated tokens', async () => {
    const prompt = 'Once upon a time'
    const out = await generate(server, { prompt, raw: true, options: { temperature: 0, num_predict: 12 } })
    const score = await server.node.runtime.score({
      model: await server.node.models.resolve('substrate-tiny'),
      mode: 'completion',
      prompt,
      output: String(out.body.response),
      seed: 'bafy-test-seed',
      count: 6,
      topK: 4,
    })
    assert.equal(score.promptTokens, out.body.prompt_eval_count)
    const split = score.splits[0]!
    assert.equal(split.evidence.length, 6)
    for (const e of split.evidence) {
      assert.equal(e.topK[0]!.token, e.claimed, `greedy output is the model's top token at ${e.position}`)
    }
  })

  test('llama-server killed mid-stream: a typed error, then a fresh runner answers', async () => {
    await generate(server, { prompt: 'hi', options: { num_predict: 1 } })
    const tree = [await runnerPid(server)].flatMap((p) => [p, ...descendants(p)])
    const llama = tree.find(isServer)
    assert.ok(llama !== undefined)
    const res = await endlessStream(server)
    const reader = res.body!.getReader()
    await reader.read()
    process.kill(llama, 'SIGKILL')
    let text = ''
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      text += new TextDecoder().decode(value)
    }
    const last = JSON.parse(text.trim().split('\n').at(-1)!) as Record<string, unknown>
    assert.equal(last.code, 'E_RUNNER_CRASHED', text.slice(-400))
    const again = await generate(server, { prompt: 'hi', options: { num_predict: 4 } })
    assert.equal(again.status, 200, JSON.stringify(again.body))
  })
})
