// A load that cannot fit in memory is refused up front, with a typed error and no runner
// started, instead of being found out by the OOM killer halfway through.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { SubstrateError } from '../../src/errors.ts'
import { silentLogger } from '../../src/logger.ts'
import { TINY_ANSWER, writeTinyModel } from '../../src/models/builtin.ts'
import type { ModelRecord } from '../../src/models/types.ts'
import { createRuntime } from '../../src/runtime/runtime.ts'
import { startTestNode, type TestNode } from '../helpers/node.ts'

// substrate-tiny's weights claiming a 2^30-token context. At the daemon's default context
// (set to that size below) and 4 parallel sequences its KV cache is estimated at terabytes:
// more than any machine these tests run on has, where 16 Mi tokens (~110 GB) would fit some.
const HUGE_CONTEXT = 2 ** 30
const HUGE_MODEL = 'huge-context:latest'

async function post(url: string, path: string, body: unknown) {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

async function runners(url: string): Promise<Array<{ name: string; contextSize: number; pid: number }>> {
  const res = await fetch(`${url}/substrate/v1/runners`, { signal: AbortSignal.timeout(5000) })
  assert.equal(res.status, 200)
  return ((await res.json()) as { runners: Array<{ name: string; contextSize: number; pid: number }> })
    .runners
}

describe('a model that cannot fit in memory', () => {
  let t: TestNode
  let dir: string
  before(async () => {
    t = await startTestNode({ runtime: { parallel: 4, contextSize: HUGE_CONTEXT } })
    dir = mkdtempSync(join(tmpdir(), 'substrate-huge-'))
    const file = join(dir, 'huge-context.gguf')
    await writeTinyModel(file, { contextLength: HUGE_CONTEXT })
    const imported = await post(t.url, '/substrate/v1/models/import', {
      path: file,
      name: HUGE_MODEL,
      stream: false,
    })
    assert.equal(imported.status, 200, JSON.stringify(imported.body))
    const model = imported.body.model as { details: { contextLength: number } }
    assert.equal(model.details.contextLength, HUGE_CONTEXT)
  })
  after(async () => {
    await t?.close()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  test('is refused with HTTP 507 E_INSUFFICIENT_MEMORY before any runner starts', async () => {
    // Streaming (the default) too: the check runs before the 200 and the first NDJSON line.
    const r = await post(t.url, '/api/generate', { model: HUGE_MODEL, prompt: 'hi' })
    assert.equal(r.status, 507, JSON.stringify(r.body))
    assert.equal(r.body.code, 'E_INSUFFICIENT_MEMORY')
    assert.match(String(r.body.error), /needs about .* of memory but only .* free/)
    assert.match(String(r.body.hint), /contextSize|parallel/)
    assert.deepEqual(await runners(t.url), [])
  })

  test('is refused on the chat API too, still without a runner', async () => {
    const r = await post(t.url, '/api/chat', {
      model: HUGE_MODEL,
      messages: [{ role: 'user', content: 'hi' }],
      stream: false,
    })
    assert.equal(r.status, 507, JSON.stringify(r.body))
    assert.equal(r.body.code, 'E_INSUFFICIENT_MEMORY')
    assert.deepEqual(await runners(t.url), [])
  })

  test('leaves the daemon serving models that fit', async () => {
    const r = await post(t.url, '/api/generate', { model: 'substrate-tiny', prompt: 'hi', stream: false })
    assert.equal(r.status, 200, JSON.stringify(r.body))
    assert.equal(String(r.body.response).trim(), TINY_ANSWER)
    // substrate-tiny is trained on 4096 tokens: the huge default context is clamped to that.
    assert.deepEqual(
      (await runners(t.url)).map((r) => [r.name, r.contextSize]),
      [['substrate-tiny:latest', 4096]],
    )
  })

  test('loads once num_ctx asks for a context that fits', async () => {
    const r = await post(t.url, '/api/generate', {
      model: HUGE_MODEL,
      prompt: 'hi',
      stream: false,
      options: { num_ctx: 2048 },
    })
    assert.equal(r.status, 200, JSON.stringify(r.body))
    assert.equal(String(r.body.response).trim(), TINY_ANSWER)
    const loaded = (await runners(t.url)).find((r) => r.name === HUGE_MODEL)
    assert.equal(loaded?.contextSize, 2048)
  })
})

describe('the memory check before a load', () => {
  test('is asked about the context the runner will use, not a num_ctx beyond the trained one', async () => {
    const checked: Array<{ contextSize: number; parallel: number }> = []
    const runtime = createRuntime(
      { logger: silentLogger },
      {
        threads: 1,
        parallel: 4,
        contextSize: 2048,
        keepAliveMs: 60_000,
        maxLoadedModels: 2,
        spawn: () => {
          throw new Error('the check refused this load: no runner may start')
        },
        checkCanLoad: (_model, contextSize, parallel) => {
          checked.push({ contextSize, parallel })
          throw new SubstrateError('E_INSUFFICIENT_MEMORY', 'refused by the test')
        },
      },
    )
    const model: ModelRecord = {
      name: 'trained-4k:latest',
      digest: `sha256:${'ab'.repeat(32)}`,
      size: 1000,
      path: '/nonexistent/model.gguf',
      modifiedAt: new Date(0).toISOString(),
      details: {
        format: 'gguf',
        architecture: 'llama',
        family: 'llama',
        parameterCount: 1000,
        parameterSize: '1K',
        quantization: 'F32',
        contextLength: 4096,
        chatTemplate: undefined,
      },
    }
    const attempt = async () => {
      for await (const _ of runtime.generate({
        model,
        mode: 'completion',
        prompt: 'hi',
        options: {},
        contextSize: 1_048_576,
      })) {
        assert.fail('no token can come from a refused load')
      }
    }
    try {
      await assert.rejects(attempt, { code: 'E_INSUFFICIENT_MEMORY' })
      assert.deepEqual(checked, [{ contextSize: 4096, parallel: 4 }])
    } finally {
      await runtime.stop()
    }
  })
})
