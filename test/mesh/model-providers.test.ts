import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { silentLogger } from '../../src/logger.ts'
import { createModelProviders, modelCid } from '../../src/mesh/model-providers.ts'
import { MODEL_DIGEST, OTHER_DIGEST, rejectsWith, startPeers, stopPeers, type TestPeer } from './helpers.ts'

describe('model CIDs', () => {
  test('a model digest maps to a raw sha2-256 CIDv1 carrying the same hash', () => {
    const cid = modelCid(MODEL_DIGEST)
    assert.equal(cid.version, 1)
    assert.equal(cid.code, 0x55)
    assert.equal(Buffer.from(cid.multihash.digest).toString('hex'), MODEL_DIGEST.slice('sha256:'.length))
  })

  test('anything but a sha256 digest is refused', () => {
    assert.throws(() => modelCid('sha256:xyz'), rejectsWith('E_INVALID_ARGUMENT'))
    assert.throws(() => modelCid('md5:abcd'), rejectsWith('E_INVALID_ARGUMENT'))
  })
})

describe('model providers in the DHT of three real nodes', () => {
  let peers: TestPeer[] = []
  before(async () => {
    // A line A–B–C: C finds A's record through B.
    peers = await startPeers(3, 'line')
  })
  after(() => stopPeers(peers))

  test('a holder provides a model and a node two hops away finds it', async () => {
    const [a, , c] = [peers[0]!, peers[1]!, peers[2]!]
    const providersA = createModelProviders({ mesh: a.mesh, logger: silentLogger })
    const providersC = createModelProviders({ mesh: c.mesh, logger: silentLogger })
    await providersA.provide(MODEL_DIGEST, { timeoutMs: 10_000 })
    const found = await providersC.find(MODEL_DIGEST, { timeoutMs: 5_000, limit: 1 })
    assert.deepEqual(found, [a.identity.id])
  })

  test('a model nobody holds finds no providers within the deadline', async () => {
    const providers = createModelProviders({ mesh: peers[2]!.mesh, logger: silentLogger })
    assert.deepEqual(await providers.find(OTHER_DIGEST, { timeoutMs: 2_000 }), [])
  })
})

describe('withdrawing a model from the DHT', () => {
  const started: TestPeer[] = []
  after(() => stopPeers(started))

  test('a holder that withdrew a model stops announcing it; its other models are still found', async () => {
    // A provides two models while B is up (B keeps copies of both records), then B leaves
    // and A withdraws one: a newcomer that can only ask A finds A for the other one only.
    const [a, b] = await startPeers(2)
    started.push(a!, b!)
    const providersA = createModelProviders({ mesh: a!.mesh, logger: silentLogger })
    await providersA.provide(MODEL_DIGEST, { timeoutMs: 10_000 })
    await providersA.provide(OTHER_DIGEST, { timeoutMs: 10_000 })
    await b!.mesh.stop()
    await providersA.withdraw(MODEL_DIGEST)
    const [newcomer] = await startPeers(1)
    started.push(newcomer!)
    await newcomer!.mesh.dial(a!.mesh.multiaddrs()[0]!, 5_000)
    const providers = createModelProviders({ mesh: newcomer!.mesh, logger: silentLogger })
    assert.deepEqual(await providers.find(OTHER_DIGEST, { timeoutMs: 5_000, limit: 1 }), [a!.identity.id])
    assert.deepEqual(await providers.find(MODEL_DIGEST, { timeoutMs: 3_000 }), [])
  })
})
