// A hostile GGUF that passes the store's checks (sizes and offsets agree) but lies in its
// metadata fails inside the sandboxed runner, reaches the client as a typed error, and the
// daemon keeps serving. llama.cpp refuses a shape mismatch cleanly; an absurd layer count
// makes it abort (SIGABRT) — that crash stays inside the sandbox.

import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { TINY_ANSWER, writeTinyModel } from '../../src/models/builtin.ts'
import { startTestNode, type TestNode } from '../helpers/node.ts'

const GGUF_UINT32 = 4

/** Rewrites a u32 metadata value in place: the file stays the same size, offsets stay valid. */
function patchU32(file: Buffer, key: string, value: number): void {
  const at = file.indexOf(Buffer.from(key))
  assert.ok(at > 0, `${key} is in the file`)
  assert.equal(file.readUInt32LE(at + key.length), GGUF_UINT32, `${key} is a u32`)
  file.writeUInt32LE(value, at + key.length + 4)
}

async function post(url: string, path: string, body: unknown) {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

describe('a malicious model file', () => {
  let t: TestNode
  before(async () => {
    t = await startTestNode({ sandbox: { backend: 'bwrap' } })
    assert.equal(t.node.sandbox.active, 'bwrap')
  })
  after(async () => t?.close())

  const cases: Array<{ name: string; key: string; value: number; codes: string[] }> = [
    // the tensors keep their 64-wide shapes: llama.cpp finds them the wrong shape
    {
      name: 'lies about its width',
      key: 'llama.embedding_length',
      value: 4096,
      codes: ['E_INVALID_MODEL_FILE'],
    },
    // 100000 layers: llama.cpp asserts and aborts while loading
    {
      name: 'claims an absurd layer count',
      key: 'llama.block_count',
      value: 100_000,
      codes: ['E_INVALID_MODEL_FILE', 'E_RUNNER_START'],
    },
  ]
  for (const c of cases) {
    test(`that ${c.name} fails in the runner with a typed error; the daemon serves on`, async () => {
      const path = join(t.home, `${c.key}.gguf`)
      await writeTinyModel(path)
      const file = readFileSync(path)
      patchU32(file, c.key, c.value)
      writeFileSync(path, file)
      const name = c.key.replaceAll('.', '-')
      const imported = await post(t.url, '/substrate/v1/models/import', { path, name, stream: false })
      assert.equal(imported.status, 200, `the store accepts it: ${JSON.stringify(imported.body)}`)

      const r = await post(t.url, '/api/generate', { model: name, prompt: 'hi', stream: false })
      assert.ok(r.status >= 400, JSON.stringify(r.body))
      assert.ok(c.codes.includes(String(r.body.code)), JSON.stringify(r.body))

      const ok = await post(t.url, '/api/generate', { model: 'substrate-tiny', prompt: 'hi', stream: false })
      assert.equal(ok.status, 200)
      assert.equal(String(ok.body.response).trim(), TINY_ANSWER)
    })
  }
})
