import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { type CapacityGossip, createCapacityGossip } from '../../src/mesh/capacity-gossip.ts'
import {
  type CapacitySnapshot,
  signCapacityRecord,
  verifyCapacityRecord,
} from '../../src/mesh/capacity-record.ts'
import { CAPACITY_TOPIC } from '../../src/mesh/libp2p-node.ts'
import { MODEL_DIGEST, rejectsWith, startPeers, stopPeers, type TestPeer, waitFor } from './helpers.ts'

const snapshotOf = (freeSlots: number): CapacitySnapshot => ({
  models: [{ digest: MODEL_DIGEST, name: 'substrate-tiny:latest' }],
  loaded: [MODEL_DIGEST],
  freeSlots,
  tokensPerSecond: 250.5,
  queueDepth: 0,
})

describe('capacity records', () => {
  const alice = generateIdentity()
  const mallory = generateIdentity()

  test('a record verifies when it arrives from its signer', () => {
    const bytes = signCapacityRecord(alice, snapshotOf(2))
    const env = verifyCapacityRecord(bytes, alice.id)
    assert.equal(env.payload.freeSlots, 2)
    assert.equal(env.payload.models[0]?.digest, MODEL_DIGEST)
  })

  test('a record gossiped by another peer than its signer is refused', () => {
    const bytes = signCapacityRecord(alice, snapshotOf(2))
    assert.throws(() => verifyCapacityRecord(bytes, mallory.id), rejectsWith('E_SIGNATURE_INVALID'))
  })

  test('an expired record is refused', () => {
    const bytes = signCapacityRecord(alice, snapshotOf(2), { now: Date.now() - 10 * 60_000, ttlMs: 60_000 })
    assert.throws(() => verifyCapacityRecord(bytes, alice.id), rejectsWith('E_RECORD_EXPIRED'))
  })
})

describe('capacity gossip over three real nodes', () => {
  let peers: TestPeer[] = []
  let gossips: CapacityGossip[] = []
  const free = [1, 2, 3]

  before(async () => {
    // A line A–B–C: C hears A only through B, so relaying (and origin checks) are exercised.
    peers = await startPeers(3, 'line')
    gossips = peers.map((p, i) =>
      createCapacityGossip(
        { mesh: p.mesh, identity: p.identity, logger: silentLogger, snapshot: () => snapshotOf(free[i]!) },
        { publishIntervalMs: 300, staleAfterMs: 1_500 },
      ),
    )
    await Promise.all(gossips.map((g) => g.start()))
  })
  after(async () => {
    await Promise.all(gossips.map((g) => g.stop()))
    await stopPeers(peers)
  })

  test('every node sees the other two with their last record', async () => {
    await waitFor(() => gossips.every((g) => g.view().length === 2), 'all views to hold two peers', 8_000)
    const viewOfC = gossips[2]!.view()
    const a = viewOfC.find((e) => e.peer === peers[0]!.identity.id)
    assert.ok(a, 'C sees A through B')
    assert.equal(a.record.freeSlots, 1)
    assert.equal(a.record.tokensPerSecond, 250.5)
    assert.ok(Date.now() - a.lastSeen < 5_000)
    assert.equal(gossips[0]!.get(peers[0]!.identity.id), undefined, 'a node does not list itself')
  })

  test('a change is published promptly and reported through onChange', async () => {
    let changes = 0
    const off = gossips[2]!.onChange(() => changes++)
    free[0] = 0
    gossips[0]!.notifyChanged()
    await waitFor(
      () => gossips[2]!.get(peers[0]!.identity.id)?.record.freeSlots === 0,
      'C to see A busy',
      3_000,
    )
    off()
    assert.ok(changes > 0)
  })

  test('a record forged in another key is rejected and never enters a view', async () => {
    const forger = peers[0]!
    const victim = generateIdentity()
    const before = gossips[1]!.stats().rejected
    const forged = signCapacityRecord(victim, { ...snapshotOf(99), freeSlots: 99 })
    await forger.mesh.libp2p.services.pubsub.publish(CAPACITY_TOPIC, forged)
    await waitFor(() => gossips[1]!.stats().rejected > before, 'B to reject the forged record', 3_000)
    for (const g of gossips) {
      assert.equal(g.get(victim.id), undefined)
      assert.ok(g.view().every((e) => e.record.freeSlots !== 99))
    }
  })

  test('a flood from one peer is rate limited, not delivered', async () => {
    const flooder = peers[2]!
    const before = gossips[1]!.stats()
    for (let i = 0; i < 30; i++) {
      const bytes = signCapacityRecord(flooder.identity, { ...snapshotOf(7), queueDepth: i })
      await flooder.mesh.libp2p.services.pubsub.publish(CAPACITY_TOPIC, bytes)
    }
    await waitFor(
      () => gossips[1]!.stats().rateLimited > before.rateLimited,
      'B to drop excess records',
      3_000,
    )
    const after = gossips[1]!.stats()
    assert.ok(after.accepted - before.accepted < 15, `accepted ${after.accepted - before.accepted} of 30`)
    // Far past the rate it is a flood: rejected, so gossipsub scores the flooder down.
    await waitFor(() => gossips[1]!.stats().flooded > before.flooded, 'B to reject the flood', 3_000)
    // gossipsub caches scores for a moment.
    const pubsub = peers[1]!.mesh.libp2p.services.pubsub as unknown as { getScore(p: string): number }
    await waitFor(() => pubsub.getScore(flooder.identity.id) < 0, "the flooder's score to go negative", 3_000)
  })

  test('a peer that goes quiet leaves the views once stale', async () => {
    await gossips[2]!.stop()
    const c = peers[2]!.identity.id
    await waitFor(() => gossips[0]!.get(c) === undefined, 'A to drop the silent C', 5_000)
    await waitFor(() => gossips[1]!.get(c) === undefined, 'B to drop the silent C', 5_000)
  })
})

describe('capacity view bounds', () => {
  test('a full view admits no new peers and counts the overflow', async () => {
    const peers = await startPeers(3)
    const gossips = peers.map((p, i) =>
      createCapacityGossip(
        { mesh: p.mesh, identity: p.identity, logger: silentLogger, snapshot: () => snapshotOf(i) },
        { publishIntervalMs: 200, maxPeers: 1 },
      ),
    )
    try {
      await Promise.all(gossips.map((g) => g.start()))
      const hub = gossips[0]!
      await waitFor(() => hub.stats().overflow > 0, 'the hub to turn a second peer away', 8_000)
      assert.equal(hub.view().length, 1)
    } finally {
      await Promise.all(gossips.map((g) => g.stop()))
      await stopPeers(peers)
    }
  })
})

describe('capacity changes without a notification', () => {
  test('a changed snapshot is found and published long before the keep-alive; an unchanged one is not', async () => {
    const peers = await startPeers(2)
    const free = [1, 1]
    const gossips = peers.map((p, i) =>
      createCapacityGossip(
        { mesh: p.mesh, identity: p.identity, logger: silentLogger, snapshot: () => snapshotOf(free[i]!) },
        // A keep-alive far beyond the test: only change detection can publish the change.
        { publishIntervalMs: 600_000, changeCheckMs: 100 },
      ),
    )
    try {
      await Promise.all(gossips.map((g) => g.start()))
      const a = peers[0]!.identity.id
      await waitFor(() => gossips[1]!.get(a) !== undefined, 'B to hear A once', 8_000)
      // Quiet while nothing changes: no keep-alive, no change.
      const quiet = gossips[0]!.stats().published
      await new Promise((r) => setTimeout(r, 600))
      assert.equal(gossips[0]!.stats().published, quiet, 'an unchanged snapshot is not re-published')
      // A loaded model, a busy slot…: the snapshot changes and nobody calls notifyChanged().
      free[0] = 0
      await waitFor(() => gossips[1]!.get(a)?.record.freeSlots === 0, 'B to see A busy', 5_000)
      assert.equal(gossips[0]!.stats().published, quiet + 1)
    } finally {
      await Promise.all(gossips.map((g) => g.stop()))
      await stopPeers(peers)
    }
  })
})
