// The peer keeper (src/mesh/peer-keeper.ts) on real libp2p nodes over TCP on 127.0.0.1: a
// dropped link to a mesh peer comes back with no discovery at all, a peer gone for good is
// dialled a bounded number of times with growing gaps (counted at its port by a plain TCP
// listener, so every dial anyone in libp2p makes is counted, not only the keeper's), and a
// hang-up of our own is not undone.

import assert from 'node:assert/strict'
import { createServer, type Server } from 'node:net'
import { describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMeshNode, type MeshNode, type MeshNodeInit } from '../../src/mesh/libp2p-node.ts'
import { MESH_PEER_TAG } from '../../src/mesh/peer-keeper.ts'
import { waitFor } from './helpers.ts'

async function node(init: MeshNodeInit = {}): Promise<MeshNode> {
  const mesh = await createMeshNode(
    { identity: generateIdentity(), logger: silentLogger },
    {
      relayClient: false,
      ...init,
    },
  )
  await mesh.start()
  return mesh
}

const idOf = (n: MeshNode) => peerIdFromString(n.peerId)
const linked = (a: MeshNode, b: MeshNode) => a.libp2p.getConnections(idOf(b)).some((c) => c.status === 'open')
/** Both ends know each other as mesh peers (identify listed the Substrate DHT protocol). */
const meshPeers = (a: MeshNode, b: MeshNode) =>
  a.libp2p.services.peerKeeper!.meshPeers().includes(b.peerId) &&
  b.libp2p.services.peerKeeper!.meshPeers().includes(a.peerId)

/** Discovery events on `x` about `y` and on `y` about `x`, from now on. */
function countDiscoveries(x: MeshNode, y: MeshNode): () => number {
  let n = 0
  for (const [m, other] of [
    [x, y],
    [y, x],
  ] as const)
    m.libp2p.addEventListener('peer:discovery', (evt) => {
      if (evt.detail.id.toString() === other.peerId) n++
    })
  return () => n
}

describe('the peer keeper', () => {
  test('a dropped link to a mesh peer is dialled again, with no discovery event, and the others stay', async () => {
    const [a, b, c] = [await node(), await node(), await node()]
    try {
      await a.dial(b.multiaddrs()[0]!, 10_000)
      await a.dial(c.multiaddrs()[0]!, 10_000)
      await waitFor(
        () => meshPeers(a, b) && meshPeers(a, c),
        'a, b and c to know each other as mesh peers',
        15_000,
      )
      const tags = (await a.libp2p.peerStore.get(idOf(b))).tags
      assert.equal(tags.get(MESH_PEER_TAG)?.value, 100, 'b is tagged a mesh peer in a’s peer store')
      // Past start-up: a DHT query still in flight (the first self-query, the table refresh)
      // would dial b again on its own, and the keeper's part would not be seen.
      await sleep(3_000)
      const discoveries = countDiscoveries(a, b)
      const toC = a.libp2p.getConnections(idOf(c))[0]!.id

      // What libp2p's connection monitor does to a link whose ping timed out.
      for (const conn of a.libp2p.getConnections(idOf(b))) conn.abort(new Error('ping timed out'))
      await waitFor(() => !linked(a, b), 'the link a–b to drop')
      await waitFor(() => linked(a, b) && linked(b, a), 'a–b to be dialled again', 15_000)

      assert.equal(discoveries(), 0, 'no discovery event about a or b brought it back')
      const redialled = [a, b].map((n) => n.links()!.redials.succeeded).reduce((x, y) => x + y, 0)
      assert.ok(redialled >= 1, 'the keeper redialled it')
      assert.ok(
        a.libp2p.getConnections(idOf(c)).some((conn) => conn.id === toC),
        'a–c was not touched',
      )
    } finally {
      await Promise.all([a, b, c].map((n) => n.stop()))
    }
  })

  test('a mesh peer gone for good is dialled a bounded number of times, with growing gaps', async () => {
    const keepPeers = { minDelayMs: 100, maxDelayMs: 800, remoteCloseDelayMs: 100, maxAttempts: 5 }
    const a = await node({ keepPeers })
    const b = await node()
    let server: Server | undefined
    try {
      await a.dial(b.multiaddrs()[0]!, 10_000)
      await waitFor(() => meshPeers(a, b), 'a and b to know each other as mesh peers', 15_000)
      // kad-dht tags its closest peers (`kad-close`, and KEEP_ALIVE for libp2p's own reconnect
      // queue, which would redial 5 more times without jitter): the keeper removes the latter.
      const deadline = Date.now() + 15_000
      let tags: string[] = []
      const kadTagged = () => tags.includes('kad-close') && !tags.some((t) => t.startsWith('keep-alive'))
      while (!kadTagged() && Date.now() < deadline) {
        await sleep(50)
        tags = [...(await a.libp2p.peerStore.get(idOf(b))).tags.keys()]
      }
      assert.ok(kadTagged(), `b's tags in a's peer store: ${tags.join(', ')}`)
      const port = Number(/\/tcp\/(\d+)/.exec(b.multiaddrs()[0]!)![1])
      await b.stop()
      // b's address now answers with a plain TCP listener that counts and closes: every dial of
      // b from here on, by anyone in a's libp2p, lands here and fails.
      const dials: number[] = []
      server = createServer((socket) => {
        dials.push(Date.now())
        socket.destroy()
      })
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject)
        server!.listen(port, '127.0.0.1', resolve)
      })
      await waitFor(() => a.links()!.redials.gaveUp === 1, 'a to give up on b', 20_000)
      await sleep(2_000)
      assert.equal(a.links()!.redials.attempts, 5)
      assert.ok(dials.length >= 1 && dials.length <= 5, `b's port was dialled ${dials.length} times`)
      const gaps = dials.slice(1).map((t, i) => t - dials[i]!)
      // Jittered to 50–100 % of 100, 200, 400, 800 ms (plus the failed dial's own time).
      if (gaps.length >= 3) assert.ok(gaps.at(-1)! >= 200, `gaps ${gaps.join(', ')} ms`)
      assert.equal(a.links()!.redialing, 0)
    } finally {
      server?.close()
      await a.stop()
      await b.stop()
    }
  })

  test('our own hang-up is not redialled; the peer we hung up on waits before dialling back', async () => {
    const [a, b] = [await node(), await node()]
    try {
      await a.dial(b.multiaddrs()[0]!, 10_000)
      await waitFor(() => meshPeers(a, b), 'a and b to know each other as mesh peers', 15_000)
      await a.libp2p.hangUp(idOf(b))
      await waitFor(() => !linked(b, a), 'b to see the link closed')
      await sleep(200)
      assert.equal(a.links()!.redialing, 0, 'a hung up on purpose: no redial')
      assert.equal(b.links()!.redialing, 1, 'b will dial a again, after the remote-close delay')
      assert.ok(!linked(a, b), 'not at once')
    } finally {
      await Promise.all([a, b].map((n) => n.stop()))
    }
  })
})

describe('one connection per peer', () => {
  test('a second connection between two peers is closed by its dialler; gossip moves to the one kept', async () => {
    const [x, y] = [await node(), await node()]
    const [small, large] = x.peerId < y.peerId ? [x, y] : [y, x]
    try {
      const topic = 'substrate/test-links/1'
      const got = new Map<MeshNode, number>([
        [small, 0],
        [large, 0],
      ])
      for (const n of [small, large]) {
        n.libp2p.services.pubsub.subscribe(topic)
        n.libp2p.services.pubsub.addEventListener('message', (evt) => {
          if (evt.detail.topic === topic) got.set(n, got.get(n)! + 1)
        })
      }
      // The larger id dials first: gossipsub opens its streams on that connection.
      await large.dial(small.multiaddrs()[0]!, 10_000)
      await waitFor(
        () =>
          small.libp2p.services.pubsub.getSubscribers(topic).length === 1 &&
          large.libp2p.services.pubsub.getSubscribers(topic).length === 1,
        'both to see the other subscribed',
        15_000,
      )
      const first = large.libp2p.getConnections(idOf(small))[0]!
      // The smaller id dials too (as when both ends dial each other at once): that connection is
      // the one both keep, so the first one, with gossipsub's streams on it, is the spare.
      await small.libp2p.dial(idOf(large), { force: true, signal: AbortSignal.timeout(10_000) })
      assert.equal(small.libp2p.getConnections(idOf(large)).length, 2)
      await waitFor(
        () =>
          first.status !== 'open' &&
          small.libp2p.getConnections(idOf(large)).length === 1 &&
          large.libp2p.getConnections(idOf(small)).length === 1,
        'the spare connection to close',
        15_000,
      )
      assert.equal(large.links()!.sparesClosed, 1, 'its dialler closed it')
      assert.equal(small.links()!.sparesClosed, 0)
      assert.equal(small.links()!.redialing + large.links()!.redialing, 0, 'a spare closing is no lost link')
      // gossipsub follows to the connection kept, both ways.
      const deadline = Date.now() + 15_000
      for (let i = 0; (got.get(small)! === 0 || got.get(large)! === 0) && Date.now() < deadline; i++) {
        await small.libp2p.services.pubsub.publish(topic, new Uint8Array([1, i % 256]))
        await large.libp2p.services.pubsub.publish(topic, new Uint8Array([2, i % 256]))
        await sleep(300)
      }
      assert.ok(
        got.get(small)! > 0 && got.get(large)! > 0,
        `messages received ${[...got.values()].join(', ')}`,
      )
    } finally {
      await Promise.all([x, y].map((n) => n.stop()))
    }
  })
})
