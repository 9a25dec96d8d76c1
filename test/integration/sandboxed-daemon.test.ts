// The daemon runs its model runners in the sandbox by default: a request is answered by a
// runner the host sees under the unprivileged runner account (the daemon here is root, as in
// CI), the doctor route reports the layers it probed, and a runner that meets its memory
// ceiling reaches the client as a typed error while the daemon carries on.

import assert from 'node:assert/strict'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import type { DoctorReport } from '../../src/api/client.ts'
import { SubstrateError } from '../../src/errors.ts'
import { silentLogger } from '../../src/logger.ts'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import type { ModelRecord } from '../../src/models/types.ts'
import { createRuntime } from '../../src/runtime/runtime.ts'
import { findRunnerUser } from '../../src/sandbox/runner-user.ts'
import { createRunnerSpawner } from '../../src/sandbox/select.ts'
import { startTestNode, type TestNode, tempHome } from '../helpers/node.ts'
import { argvOf, descendants, uidOf } from '../helpers/processes.ts'
import { writeTinyModelRecord } from '../helpers/tiny-model.ts'

const MiB = 2 ** 20
describe('a daemon with the default sandbox', () => {
  let t: TestNode
  before(async () => {
    t = await startTestNode({ sandbox: { backend: 'bwrap' } })
  })
  after(async () => t?.close())

  test('serves substrate-tiny from a runner that runs as the runner account', async () => {
    assert.deepEqual(
      { active: t.node.sandbox.active, enforced: t.node.sandbox.enforced },
      { active: 'bwrap', enforced: true },
      JSON.stringify(t.node.sandbox),
    )
    const res = await fetch(`${t.url}/api/generate`, {
      method: 'POST',
      body: JSON.stringify({ model: 'substrate-tiny', prompt: 'hi', stream: false }),
    })
    const body = (await res.json()) as { response: string }
    assert.equal(res.status, 200, JSON.stringify(body))
    assert.equal(body.response.trim(), TINY_ANSWER)

    const { runners } = (await (await fetch(`${t.url}/substrate/v1/runners`)).json()) as {
      runners: Array<{ pid: number }>
    }
    const pid = runners[0]?.pid
    assert.ok(pid !== undefined && pid > 0, 'a runner is loaded')
    const tree = [pid, ...descendants(pid)]
    // bwrap's argv names the runner too: the runner is the process that node itself runs
    const node = tree.find((p) => {
      const argv = argvOf(p)
      return argv[0] === process.execPath && argv.some((a) => a.includes('runner-main'))
    })
    assert.ok(node !== undefined, 'the runner process is under the pid the daemon reports')
    const expected = process.getuid?.() === 0 ? (await findRunnerUser())?.uid : process.getuid?.()
    assert.ok(expected !== undefined && expected !== 0)
    assert.equal(uidOf(node), expected, 'the runner runs as the unprivileged runner account')
  })

  test('the doctor route reports the backend and every layer, probed', { timeout: 60_000 }, async () => {
    const res = await fetch(`${t.url}/substrate/v1/doctor`)
    assert.equal(res.status, 200)
    const report = (await res.json()) as DoctorReport
    assert.equal(report.backend.active, 'bwrap')
    const layers = new Map(report.layers.map((l) => [l.layer, l]))
    for (const layer of ['filesystem', 'network-namespace', 'seccomp', 'cgroups', 'runner-user', 'landlock'])
      assert.equal(layers.get(layer)?.enforced, true, `${layer}: ${layers.get(layer)?.detail}`)
    assert.equal(report.gpu.usableInSandbox, false)
  })
})

test('a daemon asked for no sandbox says so, is not enforced, and still never runs a runner as root', async () => {
  const t = await startTestNode({ sandbox: { backend: 'none' } })
  try {
    const { runnerUser, ...status } = t.node.sandbox
    assert.deepEqual(status, {
      requested: 'none',
      active: 'none',
      enforced: false,
      reason: 'sandbox.backend = none',
    })
    const res = await fetch(`${t.url}/api/generate`, {
      method: 'POST',
      body: JSON.stringify({ model: 'substrate-tiny', prompt: 'hi', stream: false }),
    })
    const body = (await res.json()) as { response: string }
    assert.equal(body.response?.trim(), TINY_ANSWER, JSON.stringify(body))
    if (process.getuid?.() === 0) {
      assert.equal(runnerUser, 'substrate-runner')
      const { runners } = (await (await fetch(`${t.url}/substrate/v1/runners`)).json()) as {
        runners: Array<{ pid: number }>
      }
      assert.equal(uidOf(runners[0]?.pid ?? -1), (await findRunnerUser())?.uid)
    }
  } finally {
    await t.close()
  }
})

test('a runner killed at its memory ceiling reaches the client as a typed error; the next one works', {
  timeout: 120_000,
}, async (tt) => {
  const dir = tempHome()
  tt.after(() => rmSync(dir, { recursive: true, force: true }))
  const modelPath = join(dir, 'tiny.gguf')
  const model: ModelRecord = await writeTinyModelRecord(modelPath, 'tiny:latest')
  const runtimeWith = async (memoryBytes?: number) =>
    createRuntime(
      { logger: silentLogger },
      {
        launcher: await createRunnerSpawner({ logger: silentLogger }, { backend: 'bwrap', memoryBytes }),
        threads: 1,
        parallel: 1,
        contextSize: 512,
        keepAliveMs: 60_000,
        maxLoadedModels: 1,
      },
    )
  // 48 MiB: Node and the llama.cpp addon alone need more, so the runner dies loading
  const starved = await runtimeWith(48 * MiB)
  tt.after(() => starved.stop())
  const generate = async (runtime: typeof starved) => {
    let text = ''
    for await (const ev of runtime.generate({
      model,
      mode: 'completion',
      prompt: 'hi',
      options: { maxTokens: 8 },
    }))
      if (ev.type === 'token') text += ev.text
    return text
  }
  await assert.rejects(generate(starved), (err: unknown) => {
    assert.ok(err instanceof SubstrateError, String(err))
    assert.match(err.code, /^E_RUNNER_(START|CRASHED)$/)
    assert.match(err.message, /killed: out of memory \(limit 48 MiB\)/)
    return true
  })
  const fed = await runtimeWith()
  tt.after(() => fed.stop())
  assert.ok((await generate(fed)).length > 0, 'a runner with its derived ceiling answers')
})
