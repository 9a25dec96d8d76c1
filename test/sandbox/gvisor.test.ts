// The gvisor backend runs the real runner: runsc (ptrace platform, no network) starts it
// from a generated OCI bundle, it loads the one model it is given and answers a chat; its
// cgroup's OOM kill is reported as such.

import assert from 'node:assert/strict'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, it } from 'node:test'
import { SubstrateError } from '../../src/errors.ts'
import { silentLogger } from '../../src/logger.ts'
import { TINY_ANSWER, writeTinyModel } from '../../src/models/builtin.ts'
import type { ModelRecord } from '../../src/models/types.ts'
import { startRunner } from '../../src/runtime/runner-client.ts'
import { createRuntime } from '../../src/runtime/runtime.ts'
import { findTool } from '../../src/sandbox/bwrap.ts'
import { createRunnerSpawner } from '../../src/sandbox/select.ts'
import { tempHome } from '../helpers/node.ts'
import { writeTinyModelRecord } from '../helpers/tiny-model.ts'

let home: string
before(() => {
  assert.ok(findTool('runsc'), 'gVisor is not installed: run `apt-get install -y runsc` as root')
  home = tempHome('substrate-gvisor-')
})
after(() => rmSync(home, { recursive: true, force: true }))

it('runs the real runner under gVisor and answers a chat', { timeout: 120_000 }, async () => {
  const path = join(home, 'tiny.gguf')
  const model: ModelRecord = await writeTinyModelRecord(path, 'tiny:latest')
  const launcher = await createRunnerSpawner({ logger: silentLogger }, { backend: 'gvisor' })
  assert.deepEqual(
    { active: launcher.describe().active, enforced: launcher.describe().enforced },
    { active: 'gvisor', enforced: true },
    JSON.stringify(launcher.describe()),
  )
  const runtime = createRuntime(
    { logger: silentLogger },
    { launcher, threads: 1, parallel: 1, contextSize: 512, keepAliveMs: 60_000, maxLoadedModels: 1 },
  )
  try {
    let text = ''
    for await (const ev of runtime.generate({
      model,
      mode: 'chat',
      messages: [{ role: 'user', content: 'hi' }],
      options: {},
    }))
      if (ev.type === 'token') text += ev.text
    assert.equal(text.trim(), TINY_ANSWER)
  } finally {
    await runtime.stop()
  }
})

it('reports a runner that meets its memory ceiling under gVisor as out of memory', {
  timeout: 60_000,
}, async () => {
  const path = join(home, 'tiny.gguf')
  await writeTinyModel(path)
  // the cgroup holds the whole runsc tree: 64 MiB cannot hold gVisor's sentry and Node
  const launcher = await createRunnerSpawner(
    { logger: silentLogger },
    { backend: 'gvisor', memoryBytes: 64 * 2 ** 20 },
  )
  await assert.rejects(
    startRunner({
      launcher,
      logger: silentLogger,
      modelPath: path,
      contextSize: 512,
      parallel: 1,
      threads: 1,
    }),
    (err: unknown) => {
      assert.ok(err instanceof SubstrateError, String(err))
      assert.equal(err.code, 'E_RUNNER_START')
      assert.match(err.message, /killed: out of memory \(limit 64 MiB\)/)
      return true
    },
  )
})
