// A mesh job served by the real runtime and the real built-in model: a runner process on
// the worker generates, the tokens cross libp2p, and the receipt counts real tokens.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { silentLogger } from '../../src/logger.ts'
import { createJobProtocol, type JobProtocol } from '../../src/mesh/job-protocol.ts'
import { createRuntimeJobRunner } from '../../src/mesh/runtime-job.ts'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import type { ModelRecord } from '../../src/models/types.ts'
import { createRuntime, type Runtime } from '../../src/runtime/runtime.ts'
import { writeTinyModelRecord } from '../helpers/tiny-model.ts'
import { startPeers, stopPeers, type TestPeer, waitFor } from './helpers.ts'

describe('a mesh job on the real runtime with substrate-tiny', () => {
  let dir: string
  let model: ModelRecord
  let runtime: Runtime
  let peers: TestPeer[] = []
  let worker: JobProtocol
  let requester: JobProtocol

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'substrate-mesh-'))
    const path = join(dir, 'tiny.gguf')
    model = await writeTinyModelRecord(path, 'substrate-tiny:latest')
    runtime = createRuntime(
      { logger: silentLogger },
      { threads: 1, parallel: 1, contextSize: 512, keepAliveMs: 60_000, maxLoadedModels: 1 },
    )
    peers = await startPeers(2)
    const runJob = createRuntimeJobRunner({
      runtime,
      modelByDigest: (d) => (d === model.digest ? model : undefined),
    })
    const base = { logger: silentLogger, hasModel: (d: string) => d === model.digest, runJob }
    worker = createJobProtocol({ ...base, mesh: peers[0]!.mesh, identity: peers[0]!.identity })
    requester = createJobProtocol({ ...base, mesh: peers[1]!.mesh, identity: peers[1]!.identity })
    await worker.start()
    await requester.start()
  })
  after(async () => {
    await worker?.stop()
    await requester?.stop()
    await stopPeers(peers)
    await runtime?.stop()
    rmSync(dir, { recursive: true, force: true })
  })

  test('the answer streams from the worker with a receipt for the tokens it counted', async (t) => {
    const job = {
      model: model.digest,
      mode: 'completion' as const,
      prompt: 'hi',
      options: { temperature: 0 },
    }
    const cold = await requester.run(peers[0]!.identity.id, { ...job, maxTokens: 64 })
    assert.equal(cold.text.trim(), TINY_ANSWER)
    assert.equal(cold.receipt.worker, peers[0]!.identity.id)
    assert.ok(cold.receipt.receipt.promptTokens > 0)
    assert.equal(cold.receipt.receipt.outputTokens, cold.stats.outputTokens)
    // Model loaded now: this is the mesh's own overhead plus generation.
    const warm = await requester.run(peers[0]!.identity.id, { ...job, maxTokens: 64 })
    assert.equal(warm.text, cold.text)
    t.diagnostic(
      `cold ${cold.totalMs.toFixed(1)} ms; warm ${warm.totalMs.toFixed(1)} ms, ` +
        `first token ${warm.firstTokenMs?.toFixed(1)} ms, ${warm.stats.outputTokens} tokens`,
    )
  })

  test('maxTokens in the manifest caps the worker whatever the options say', async () => {
    const result = await requester.run(peers[0]!.identity.id, {
      model: model.digest,
      mode: 'completion',
      prompt: 'clock ~',
      options: { temperature: 0, maxTokens: 1_000 },
      maxTokens: 5,
    })
    assert.equal(result.stats.outputTokens, 5)
    assert.equal(result.stats.reason, 'length')
  })

  test('leaving an endless answer early stops the runner generating', async () => {
    let n = 0
    for await (const ev of requester.stream(peers[0]!.identity.id, {
      model: model.digest,
      mode: 'completion',
      prompt: 'clock ~',
      options: { temperature: 0 },
      maxTokens: 100_000,
    })) {
      if (ev.type === 'token' && ++n === 10) break
    }
    await waitFor(() => worker.activeJobs() === 0, 'the worker to end the job', 5_000)
    await waitFor(() => runtime.ps().every((m) => m.active === 0), 'the runner to go idle', 5_000)
  })
})
