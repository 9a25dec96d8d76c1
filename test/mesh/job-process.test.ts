// The fault that matters most in a real mesh: the worker's process dies mid-answer. Here it
// is a separate OS process, SIGKILLed while tokens are streaming.

import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { after, before, describe, test } from 'node:test'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createJobProtocol, type JobProtocol } from '../../src/mesh/job-protocol.ts'
import { createMeshNode, type MeshNode } from '../../src/mesh/libp2p-node.ts'
import { fakeRunJob, MODEL_DIGEST, rejectsWith } from './helpers.ts'

describe('a worker process killed mid-stream', () => {
  let child: ChildProcess
  let worker: { id: string; addr: string }
  let mesh: MeshNode
  let requester: JobProtocol

  before(async () => {
    child = spawn(process.execPath, [new URL('./worker-process.ts', import.meta.url).pathname], {
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    const lines = createInterface({ input: child.stdout! })
    let timer: NodeJS.Timeout | undefined
    const line = await Promise.race([
      new Promise<string>((resolve) => lines.once('line', resolve)),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('worker did not start')), 20_000)
      }),
    ]).finally(() => clearTimeout(timer))
    worker = JSON.parse(line) as { id: string; addr: string }
    const identity = generateIdentity()
    mesh = await createMeshNode({ identity, logger: silentLogger })
    await mesh.start()
    requester = createJobProtocol(
      {
        mesh,
        identity,
        logger: silentLogger,
        hasModel: () => false,
        runJob: fakeRunJob({ started: 0, stopped: 0 }),
      },
      { stallTimeoutMs: 10_000 },
    )
    await mesh.dial(worker.addr)
  })
  after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await mesh?.stop()
  })

  test('the requester gets E_PEER_GONE at once, not after the stall timeout', async (t) => {
    let tokens = 0
    let killedAt = 0
    await assert.rejects(
      (async () => {
        for await (const ev of requester.stream(worker.id, {
          model: MODEL_DIGEST,
          mode: 'completion',
          prompt: 'hi',
          options: {},
          maxTokens: 100_000,
        })) {
          if (ev.type === 'token' && ++tokens === 5) {
            child.kill('SIGKILL')
            killedAt = performance.now()
          }
        }
      })(),
      rejectsWith('E_PEER_GONE'),
    )
    const detectMs = performance.now() - killedAt
    t.diagnostic(`worker death noticed ${detectMs.toFixed(1)} ms after SIGKILL`)
    assert.ok(detectMs < 2_000, `took ${detectMs} ms`)
  })
})
