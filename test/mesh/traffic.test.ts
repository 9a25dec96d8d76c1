// The mesh's byte meter (src/mesh/traffic-meter.ts) on real nodes, and the paced DHT random
// walk (walkThrottle in src/mesh/libp2p-services.ts): what keeps a quiet mesh quiet.

import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import type { PeerId, PeerInfo } from '@libp2p/interface'
import type { ConnectionManager, RandomWalk } from '@libp2p/interface-internal'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { generateIdentity } from '../../src/identity/keys.ts'
import { walkThrottle } from '../../src/mesh/libp2p-services.ts'
import { startPeers, stopPeers, waitFor } from './helpers.ts'

const KAD = '/substrate/kad/1.0.0'
const TOPIC = 'substrate/test-traffic/1'

describe('the traffic meter', () => {
  test('counts wire bytes, each protocol, and what gossipsub sent by topic and part', async () => {
    const peers = await startPeers(3)
    try {
      const [a, b, c] = peers.map((p) => p.mesh)
      for (const node of [a!, b!, c!]) node.libp2p.services.pubsub.subscribe(TOPIC)
      await waitFor(
        () => a!.libp2p.services.pubsub.getSubscribers(TOPIC).length === 2,
        'both peers to subscribe',
        15_000,
      )
      const before = a!.traffic()
      const payload = new Uint8Array(300).fill(7)
      for (let i = 0; i < 5; i++) {
        payload[0] = i
        await a!.libp2p.services.pubsub.publish(TOPIC, payload)
      }
      await waitFor(
        () => (a!.traffic().gossipSent[`topic:${TOPIC}`] ?? 0) >= 5 * 300,
        'the five messages to be charged to their topic',
        10_000,
      )
      const after = a!.traffic()
      const gossip = after.protocols['/meshsub/1.2.0']
      assert.ok(
        gossip !== undefined && gossip.out > 0 && gossip.streams > 0,
        'the gossipsub stream is metered',
      )
      // Each message is its payload plus signature, origin, seqno and topic: more than 300 bytes.
      const topicBytes =
        (after.gossipSent[`topic:${TOPIC}`] ?? 0) - (before.gossipSent[`topic:${TOPIC}`] ?? 0)
      assert.ok(topicBytes >= 5 * 300 && topicBytes < 5 * 2 * 600, `topic bytes ${topicBytes}`)
      // The parts add up to what gossipsub sent; the wire carries that and more (Noise, Yamux).
      const parts = Object.values(after.gossipSent).reduce((x, y) => x + y, 0)
      assert.equal(parts, gossip.out)
      const payloadOut = Object.values(after.protocols).reduce((x, p) => x + p.out, 0)
      assert.ok(after.wire.out > payloadOut, `wire ${after.wire.out} > payloads ${payloadOut}`)
      assert.ok(after.wire.in > 0)
      // What a sends, the others receive.
      const received = () =>
        [b!, c!].map((n) => n.traffic().protocols['/meshsub/1.2.0']?.in ?? 0).reduce((x, y) => x + y, 0)
      await waitFor(() => received() >= topicBytes, 'b and c to receive what a sent', 10_000)
    } finally {
      await stopPeers(peers)
    }
  })
})

describe('the paced random walk', () => {
  test('a mesh with no relay does not walk the DHT back to back (relay discovery keeps asking)', async () => {
    // Every node listens on /p2p-circuit, so relay discovery wants a relay it will never find.
    // libp2p's own walk ran DHT queries without pause for it: ~100 kad streams per node in 5 s.
    const peers = await startPeers(3)
    try {
      const node = peers[0]!.mesh
      await waitFor(() => node.libp2p.getConnections().length === 2, 'the star to form', 15_000)
      // Let start-up queries pass, then count the kad streams one node opens or answers.
      await new Promise((r) => setTimeout(r, 3_000))
      const streams = () => peers.reduce((n, p) => n + (p.mesh.traffic().protocols[KAD]?.streams ?? 0), 0)
      const before = streams()
      await new Promise((r) => setTimeout(r, 5_000))
      const opened = streams() - before
      assert.ok(opened <= 150, `${opened} kad streams in 5 s across 3 nodes`)
      assert.ok(node.libp2p.services.walkThrottle.gapMs > 1_000, 'the gap grew: nobody new to meet')
    } finally {
      await stopPeers(peers)
    }
  })

  test('walkers share one pace: the gap doubles while nobody new is met and resets when someone is', async () => {
    const ids = Array.from({ length: 3 }, () => peerIdFromString(generateIdentity().id))
    const connected = new Set(ids.map(String))
    let queries = 0
    const components = {
      randomWalk: { walk: () => assert.fail('libp2p’s walk must not be used') } as unknown as RandomWalk,
      peerRouting: {
        async *getClosestPeers(): AsyncGenerator<PeerInfo> {
          queries++
          for (const id of ids) yield { id, multiaddrs: [] }
        },
      } as never,
      peerStore: {} as never,
      connectionManager: {
        getConnections: (id: PeerId) => (connected.has(id.toString()) ? [{}] : []),
      } as unknown as ConnectionManager,
      peerId: peerIdFromString(generateIdentity().id),
    }
    const throttle = walkThrottle({ minGapMs: 40, maxGapMs: 400 })(components)
    throttle.start()
    const walkers = [new AbortController(), new AbortController()]
    const drain = (signal: AbortSignal) =>
      (async () => {
        for await (const _ of components.randomWalk.walk({ signal })) {
          // consume as fast as possible, like relay discovery skipping connected peers
        }
      })().catch(() => {})
    try {
      const done = walkers.map((w) => drain(w.signal))
      await new Promise((r) => setTimeout(r, 1_000))
      // Unpaced, two walkers would have run thousands of queries; paced: 40, 80, 160, 320,
      // then 400 ms gaps, ~5–6 queries in a second (shared by both walkers).
      assert.ok(queries >= 3 && queries <= 8, `${queries} queries in 1 s`)
      assert.equal(throttle.gapMs, 400)
      // A known peer we are not connected to (say, undialable) is no news: the gap stays long.
      connected.delete(ids[0]!.toString())
      const before = throttle.queries
      await waitFor(() => throttle.queries > before, 'another query', 2_000)
      assert.equal(throttle.gapMs, 400)
      // Someone new appears in the DHT: the next query meets them and the gap resets.
      ids.push(peerIdFromString(generateIdentity().id))
      await waitFor(() => throttle.gapMs === 40, 'the gap to reset', 2_000)
      for (const w of walkers) w.abort()
      await Promise.all(done)
      assert.equal(throttle.queries, queries)
    } finally {
      throttle.stop()
    }
  })

  test('a walk query asks the DHT once and takes addresses from the peer store (no lookup per peer)', async () => {
    // libp2p's PeerRouting ran a whole DHT query (findPeer) for every peer the DHT answered
    // with, because routing-table answers carry no addresses: ~90 requests a query at 10 nodes.
    const ids = Array.from({ length: 3 }, () => peerIdFromString(generateIdentity().id))
    const stored = multiaddr('/ip4/127.0.0.1/tcp/4001')
    let dhtQueries = 0
    const components = {
      randomWalk: {} as RandomWalk,
      peerRouting: {
        getClosestPeers: () => assert.fail('libp2p’s PeerRouting must not be used'),
      } as never,
      dht: {
        async *getClosestPeers() {
          dhtQueries++
          for (const id of ids) yield { name: 'PEER_RESPONSE', from: id }
          for (const id of ids) yield { name: 'FINAL_PEER', peer: { id, multiaddrs: [] } }
        },
      } as never,
      peerStore: {
        get: async (id: PeerId) => {
          if (id.equals(ids[2])) throw new Error('not found')
          return { addresses: [{ multiaddr: stored }] }
        },
      } as never,
      connectionManager: { getConnections: () => [] } as unknown as ConnectionManager,
      peerId: peerIdFromString(generateIdentity().id),
    }
    const throttle = walkThrottle({ minGapMs: 60_000 })(components)
    throttle.start()
    const walked: PeerInfo[] = []
    const stop = new AbortController()
    try {
      for await (const peer of components.randomWalk.walk({ signal: stop.signal })) {
        walked.push(peer)
        if (walked.length === 2) break
      }
    } finally {
      stop.abort()
      throttle.stop()
    }
    assert.equal(dhtQueries, 1)
    assert.deepEqual(
      walked.map((p) => [p.id.toString(), p.multiaddrs.map(String)]),
      ids.slice(0, 2).map((id) => [id.toString(), [stored.toString()]]),
      'the peers the DHT answered with, with their stored addresses; one with none is skipped',
    )
  })
})
