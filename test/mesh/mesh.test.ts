// Three daemons' mesh layers in one process: capacity from the model store and runtime,
// dispatch to the best candidate, and moving on when a candidate refuses.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMesh, type Mesh } from '../../src/mesh/mesh.ts'
import type { ModelRecord } from '../../src/models/types.ts'
import type { GenerateRequest, LoadedModel, RuntimeEvent } from '../../src/runtime/runtime.ts'
import { MODEL_DIGEST, OTHER_DIGEST, rejectsWith, waitFor } from './helpers.ts'

const record = (digest: string, name: string): ModelRecord => ({
  name,
  digest,
  size: 1,
  path: `/models/${name}`,
  modifiedAt: new Date(0).toISOString(),
  details: {
    format: 'gguf',
    architecture: 'llama',
    family: 'llama',
    parameterCount: 1,
    parameterSize: '1',
    quantization: 'F32',
    contextLength: 512,
    chatTemplate: undefined,
  },
})

interface FakeDaemon {
  id: string
  mesh: Mesh
  models: ModelRecord[]
  loaded: string[]
  served: number
  /** How long each job takes before its token; most jobs answer at once. */
  delayMs: number
  running: number
  maxRunning: number
}

async function startDaemon(models: ModelRecord[], loaded: string[]): Promise<FakeDaemon> {
  const identity = generateIdentity()
  const daemon: FakeDaemon = {
    id: identity.id,
    models,
    loaded,
    served: 0,
    delayMs: 0,
    running: 0,
    maxRunning: 0,
    mesh: undefined as never,
  }
  const runtime = {
    async *generate(req: GenerateRequest): AsyncGenerator<RuntimeEvent> {
      daemon.served++
      daemon.maxRunning = Math.max(daemon.maxRunning, ++daemon.running)
      try {
        if (daemon.delayMs > 0) await sleep(daemon.delayMs)
      } finally {
        daemon.running--
      }
      yield { type: 'token', text: `${req.model.name} from ${identity.id.slice(-6)}`, tokens: 1 }
      const stats = { reason: 'stop' as const, promptTokens: 2, outputTokens: 3, promptEvalMs: 1, evalMs: 10 }
      yield { type: 'done', stats, loadMs: 0, totalMs: 1 }
    },
    ps: () => daemon.loaded.map((digest) => ({ digest }) as LoadedModel),
  }
  daemon.mesh = await createMesh(
    { identity, logger: silentLogger, models: { list: () => daemon.models }, runtime },
    // Slow periodic gossip: records change only when a test says so.
    { capacity: { publishIntervalMs: 60_000 }, provideModels: true },
  )
  await daemon.mesh.start()
  return daemon
}

describe('the mesh layer of three daemons', () => {
  const daemons: FakeDaemon[] = []
  const tiny = record(MODEL_DIGEST, 'substrate-tiny:latest')

  before(async () => {
    daemons.push(await startDaemon([tiny], [MODEL_DIGEST])) // holds it, loaded
    daemons.push(await startDaemon([tiny], [])) // holds it
    daemons.push(await startDaemon([], [])) // holds nothing: the requester
    const first = daemons[0]!.mesh.node.multiaddrs()[0]!
    await daemons[1]!.mesh.node.dial(first)
    await daemons[2]!.mesh.node.dial(first)
  })
  after(async () => {
    await Promise.all(daemons.map((d) => d.mesh.stop()))
  })

  test('capacity records carry each node’s models, loaded models and free slots', async () => {
    const requester = daemons[2]!.mesh
    await waitFor(() => requester.capacity.view().length === 2, 'two peers in the view', 8_000)
    const a = requester.capacity.get(daemons[0]!.id)
    assert.deepEqual(a?.record.models, [{ digest: MODEL_DIGEST, name: 'substrate-tiny:latest' }])
    assert.deepEqual(a?.record.loaded, [MODEL_DIGEST])
    assert.equal(a?.record.freeSlots, 1)
    assert.deepEqual(requester.candidates(MODEL_DIGEST), [daemons[0]!.id, daemons[1]!.id])
    assert.deepEqual(requester.candidates(OTHER_DIGEST), [])
  })

  test('remote models are listed and found by name or digest', () => {
    const requester = daemons[2]!.mesh
    const [model] = requester.remoteModels()
    assert.deepEqual(model, {
      name: 'substrate-tiny:latest',
      digest: MODEL_DIGEST,
      peers: [daemons[0]!.id, daemons[1]!.id].sort(),
      loadedOn: [daemons[0]!.id],
    })
    assert.equal(requester.findRemoteModel('Substrate-Tiny')?.digest, MODEL_DIGEST)
    assert.equal(requester.findRemoteModel(MODEL_DIGEST)?.name, 'substrate-tiny:latest')
    assert.equal(requester.findRemoteModel('nobody-has-this'), undefined)
    assert.equal(requester.findRemoteModel('not a name!'), undefined)
  })

  test('a node without the model gets its answer from the best peer, with a receipt', async () => {
    const events = []
    for await (const ev of daemons[2]!.mesh.generate({
      model: MODEL_DIGEST,
      mode: 'completion',
      prompt: 'hi',
      maxTokens: 16,
    })) {
      events.push(ev)
    }
    const done = events.at(-1)
    assert.equal(done?.type, 'done')
    if (done?.type !== 'done') return
    assert.equal(done.worker, daemons[0]!.id, 'the peer with the model loaded serves')
    assert.equal(done.receipt.requester, daemons[2]!.id)
    assert.equal(daemons[0]!.served, 1)
  })

  test('a candidate that refuses is skipped for the next one', async () => {
    // A drops the model from its store without telling the mesh: its gossip still offers it.
    daemons[0]!.models = []
    try {
      const done = await collectDone(daemons[2]!.mesh)
      assert.equal(done.worker, daemons[1]!.id)
    } finally {
      daemons[0]!.models = [tiny]
    }
    // A refused a job its record offered: until that fades or it serves us, B goes first.
    const served = daemons[0]!.served
    const next = await collectDone(daemons[2]!.mesh)
    assert.equal(next.worker, daemons[1]!.id, 'the peer that refused ranks lower for a while')
    assert.equal(daemons[0]!.served, served)
    assert.equal(daemons[2]!.mesh.standing(daemons[0]!.id).lastOutcome, 'refused')
  })

  test('more jobs than free slots: none is sent to a full peer, the extra one waits for a slot and runs', async () => {
    for (const d of daemons.slice(0, 2)) d.delayMs = 400
    try {
      const requester = daemons[2]!.mesh
      const before = daemons.map((d) => requester.standing(d.id).failures)
      // A's store changed during the refusal test; its record must offer the model again.
      daemons[0]!.mesh.modelsChanged()
      await waitFor(
        () => requester.candidates(MODEL_DIGEST).length === 2,
        'both workers offering the model with a free slot',
        5_000,
      )
      const done = await Promise.all([1, 2, 3].map(() => collectDone(requester)))
      const workers = done.map((d) => d.worker)
      assert.ok(workers.includes(daemons[0]!.id) && workers.includes(daemons[1]!.id), workers.join())
      // Each worker has one slot: the requester never sent a second job to a busy one, so
      // no refusal was needed (none counted against either).
      assert.equal(daemons[0]!.maxRunning, 1)
      assert.equal(daemons[1]!.maxRunning, 1)
      assert.deepEqual(
        daemons.map((d) => requester.standing(d.id).failures),
        before,
        'no busy refusals',
      )
    } finally {
      for (const d of daemons) d.delayMs = 0
    }
  })

  test('a model nobody offers is E_MODEL_NOT_FOUND with a hint', async () => {
    await assert.rejects(
      collectDone(daemons[2]!.mesh, OTHER_DIGEST),
      (err: unknown) => rejectsWith('E_MODEL_NOT_FOUND')(err) && /no peer/.test(String(err)),
    )
  })

  test('held models are announced in the DHT', async () => {
    const found = await daemons[2]!.mesh.providers.find(MODEL_DIGEST, { timeoutMs: 5_000, limit: 2 })
    assert.ok(found.length >= 1, 'at least one holder found')
    for (const id of found) assert.ok([daemons[0]!.id, daemons[1]!.id].includes(id))
  })
})

async function collectDone(mesh: Mesh, model = MODEL_DIGEST) {
  for await (const ev of mesh.generate({ model, mode: 'completion', prompt: 'hi', maxTokens: 16 })) {
    if (ev.type === 'done') return ev
  }
  throw new Error('no done event')
}
