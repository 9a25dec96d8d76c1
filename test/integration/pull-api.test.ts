// /api/pull and /api/show through a real daemon, pulling from a local Ollama registry and
// Hugging Face Hub: Ollama's status lines, the published template/params/system kept and
// shown, the params used as defaults, and a pull that would break the quota refused.

import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { withModelDefaults } from '../../src/api/inference.ts'
import { writeTinyModel } from '../../src/models/builtin.ts'
import { sendFile, serve } from '../helpers/http-server.ts'
import { type ModelServers, PARAMS, SYSTEM, startModelServers, TEMPLATE } from '../helpers/model-servers.ts'
import { readNdjson, runCli, startTestNode, type TestNode, tempHome } from '../helpers/node.ts'

describe('pulling through the API', () => {
  let t: TestNode
  let servers: ModelServers
  let tiny: Buffer
  before(async () => {
    const path = join(tempHome('substrate-pull-api-'), 'tiny.gguf')
    await writeTinyModel(path)
    tiny = readFileSync(path)
    servers = await startModelServers(tiny)
    t = await startTestNode({
      mesh: { enabled: false },
      models: {
        ollamaRegistry: servers.registry.url(''),
        hfEndpoint: servers.hub.url(''),
        deny: ['*forbidden*'],
        quota: Math.floor(tiny.length * 1.5),
      },
    })
  })
  after(async () => {
    await t?.close()
    servers?.close()
  })

  const post = (path: string, body: object) =>
    fetch(`${t.url}${path}`, { method: 'POST', body: JSON.stringify(body) })

  test('/api/pull streams Ollama status lines and /api/show shows what the registry published', async () => {
    const res = await post('/api/pull', { model: 'ollama:tiny:1b' })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-type'), 'application/x-ndjson')
    const lines = await readNdjson(res)
    const statuses = lines.map((l) => l.status as string)
    assert.equal(statuses[0], 'pulling manifest')
    const digest = lines.find((l) => l.total === tiny.length && l.completed === tiny.length)
    assert.ok(digest !== undefined, 'the model layer reported total and completed')
    assert.match(String(digest.status), /^pulling [0-9a-f]{12}$/)
    assert.match(String(digest.digest), /^sha256:[0-9a-f]{64}$/)
    // substrate-tiny (generated at start) has these bytes: the layer is reported complete, not fetched
    assert.equal(servers.cdn.seen.length, 0)
    assert.equal(statuses.at(-1), 'success')
    assert.equal(statuses.filter((s) => s === 'success').length, 1)

    const show = (await (await post('/api/show', { model: 'tiny:1b' })).json()) as Record<string, unknown>
    assert.equal(show.template, TEMPLATE)
    assert.equal(show.system, SYSTEM)
    assert.equal(show.license, 'MIT')
    assert.match(String(show.parameters), /^temperature\s+0\.2$/m)
    assert.match(String(show.parameters), /^stop\s+"<\|user\|>"$/m)
    assert.match(String(show.modelfile), /^PARAMETER num_ctx\s+512$/m)
    assert.deepEqual(show.substrate, { source: 'ollama:tiny:1b' })
  })

  test('substrate pull --json prints NDJSON progress; substrate show prints the source and parameters', async () => {
    const pulled = await runCli(t, ['pull', 'hf:org/Tiny-GGUF:Q8_0', '--name', 'eight', '--json'])
    assert.equal(pulled.code, 0, pulled.err)
    const lines = pulled.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { status: string })
    assert.ok(lines.length >= 3)
    assert.equal(lines[0]?.status, 'pulling manifest')
    assert.equal(lines.at(-1)?.status, 'success')
    const shown = await runCli(t, ['show', 'tiny:1b'])
    assert.equal(shown.code, 0, shown.err)
    assert.match(shown.out, /Source\n\s+ollama:tiny:1b/)
    assert.match(shown.out, /Parameters\n(.*\n)*\s+temperature\s+0\.2/)
    assert.match(shown.out, /System\n\s+You are tiny\./)
    const refused = await runCli(t, ['pull', 'hf:org/Tiny-GGUF:Q3_K_L'])
    assert.equal(refused.code, 4)
    assert.match(refused.err, /no GGUF file for Q3_K_L/)
  })

  test('the published params and system prompt are defaults a request can override', async () => {
    const model = await t.node.models.resolve('tiny:1b')
    const req = withModelDefaults(model, {
      model: 'tiny:1b',
      mode: 'chat',
      messages: [{ role: 'user', content: 'hi' }],
      options: { temperature: 0.9 },
    })
    assert.deepEqual(req.options, { temperature: 0.9, stop: ['<|user|>'] })
    assert.equal(req.contextSize, 512)
    assert.deepEqual(req.messages?.[0], { role: 'system', content: SYSTEM })
    assert.deepEqual(JSON.parse(PARAMS).temperature, 0.2)
    // the daemon answers a chat with them (the tiny model's output is noise; the call must work)
    const res = await post('/api/chat', {
      model: 'tiny:1b',
      messages: [{ role: 'user', content: 'hi' }],
      options: { num_predict: 3 },
      stream: false,
    })
    assert.equal(res.status, 200, await res.clone().text())
    assert.equal(((await res.json()) as { done: boolean }).done, true)
  })

  test('failures are typed: not upstream, denied, over quota', async () => {
    const missing = await post('/api/pull', { model: 'ollama:nope:7b', stream: false })
    assert.equal(missing.status, 404)
    assert.match(((await missing.json()) as { error: string }).error, /Ollama library has no nope:7b/)
    const denied = await post('/api/pull', { model: 'ollama:forbidden:1b', stream: false })
    assert.equal(denied.status, 403)
    assert.equal(((await denied.json()) as { code: string }).code, 'E_POLICY_DENIED')
    // substrate-tiny, tiny:1b and eight share one blob; other bytes of the same size would not fit
    const other = await serve((req, res) => sendFile(req, res, Buffer.alloc(tiny.length, 7)))
    const full = await post('/api/pull', { model: other.url('/other.gguf'), stream: false })
    other.close()
    assert.equal(full.status, 507)
    assert.equal(((await full.json()) as { code: string }).code, 'E_QUOTA_EXCEEDED')
    assert.deepEqual(
      t.node.models
        .list()
        .map((m) => m.name)
        .sort(),
      ['eight:latest', 'substrate-tiny:latest', 'tiny:1b'],
    )
  })
})
