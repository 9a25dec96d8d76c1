// The libp2p host's pieces for real networks, between real nodes in this process on
// loopback: WebSockets, a circuit relay (opt-in) with a reservation and a relayed
// connection, the on-disk peer store that lets a restart reconnect without bootstrap, and
// the DHT random walk. The namespace test (test/integration/mesh-netns.test.ts) shows the
// relay between processes that really cannot reach each other.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import type { ComponentLogger, PeerId } from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { Key } from 'interface-datastore'
import { generateIdentity, type Identity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMeshNode, type MeshNode, type MeshNodeInit } from '../../src/mesh/libp2p-node.ts'
import { randomWalkDiscovery } from '../../src/mesh/libp2p-services.ts'
import { openDatastore } from '../../src/store/datastore.ts'
import { waitFor } from './helpers.ts'

const started: MeshNode[] = []
const dirs: string[] = []
after(async () => {
  await Promise.all(started.splice(0).map((n) => n.stop().catch(() => undefined)))
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
})

async function node(init: MeshNodeInit = {}, identity: Identity = generateIdentity()): Promise<MeshNode> {
  const mesh = await createMeshNode({ identity, logger: silentLogger }, init)
  await mesh.start()
  started.push(mesh)
  return mesh
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'substrate-libp2p-'))
  dirs.push(dir)
  return dir
}

const TEST_PROTOCOL = '/substrate/test-echo/1'

describe('libp2p for real networks', () => {
  test('a node listens on WebSockets beside TCP and is dialled over it', async () => {
    const a = await node({ listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'] })
    const ws = a.multiaddrs().find((m) => m.includes('/ws/'))
    assert.ok(ws, `no /ws address in ${a.multiaddrs().join(' ')}`)
    const b = await node()
    await b.dial(ws, 30_000)
    const conn = b.libp2p.getConnections(peerIdFromString(a.peerId))[0]
    assert.ok(conn)
    assert.match(conn.remoteAddr.toString(), /\/ws/)
    assert.equal(b.connectionKind(a.peerId), 'direct')
  })

  test('a node reserves a slot on an opt-in relay and is reached through it', async () => {
    const relay = await node({ relayServe: { maxReservations: 4 } })
    const plain = await node()
    // A node that does not serve as a relay is never used as one.
    const behind = await node({ bootstrap: [plain.multiaddrs()[0]!, relay.multiaddrs()[0]!] })
    await waitFor(() => behind.reachability().relays.length > 0, 'a relay reservation', 30_000)
    const r = behind.reachability()
    assert.deepEqual(r.relays, [relay.peerId])
    assert.equal(r.status, 'relayed')
    assert.equal(relay.reachability().relayServing?.reservations, 1)
    assert.equal(relay.reachability().relayServing?.maxReservations, 4)
    assert.equal(plain.reachability().relayServing, null)
    const circuit = behind.multiaddrs().find((m) => m.includes('/p2p-circuit'))
    assert.ok(circuit?.startsWith(relay.multiaddrs()[0]!.split('/p2p/')[0]!), circuit)
    if (circuit === undefined) return

    // A third node dials the relayed address, and a protocol that allows limited
    // connections runs over it.
    await behind.libp2p.handle(
      TEST_PROTOCOL,
      async (stream) => {
        for await (const chunk of stream) stream.send(chunk)
        await stream.close()
      },
      { runOnLimitedConnection: true },
    )
    const requester = await node()
    const relayed = await requester.libp2p.dial(multiaddr(circuit), { signal: AbortSignal.timeout(30_000) })
    assert.equal(requester.connectionKind(behind.peerId), 'relayed')
    assert.ok(relayed.limits !== undefined, 'a relayed connection carries the relay limits')
    // On this very connection: dialProtocol by peer id would first try the peer's direct
    // (loopback) address, which in one process is reachable.
    const stream = await relayed.newStream(TEST_PROTOCOL, {
      runOnLimitedConnection: true,
      signal: AbortSignal.timeout(30_000),
    })
    stream.send(new TextEncoder().encode('through the relay'))
    await stream.close()
    let echoed = ''
    for await (const chunk of stream) echoed += new TextDecoder().decode(chunk.subarray())
    assert.equal(echoed, 'through the relay')
  })

  test('a relay refuses reservations beyond its limit', async () => {
    const relay = await node({ relayServe: { maxReservations: 1 } })
    const first = await node({ bootstrap: [relay.multiaddrs()[0]!] })
    await waitFor(() => first.reachability().relays.length > 0, 'the first reservation', 30_000)
    const second = await node({ bootstrap: [relay.multiaddrs()[0]!] })
    await waitFor(() => second.libp2p.getConnections().length > 0, 'the second node to connect', 30_000)
    // Give it time to try; the relay must stay at its one reservation.
    await new Promise((r) => setTimeout(r, 1_500))
    assert.deepEqual(second.reachability().relays, [])
    assert.equal(relay.reachability().relayServing?.reservations, 1)
  })

  test('a relay cuts a relayed connection that passes its data limit', async () => {
    // 64 KiB each way through a relay: all of it within a 1 MiB limit, and the connection
    // cut short within a 16 KiB one.
    const echoThrough = async (connectionDataBytes: number) => {
      const relay = await node({ relayServe: { maxReservations: 4, connectionDataBytes } })
      const behind = await node({ bootstrap: [relay.multiaddrs()[0]!] })
      await waitFor(() => behind.reachability().relays.length > 0, 'a relay reservation', 30_000)
      const circuit = behind.multiaddrs().find((m) => m.includes('/p2p-circuit'))!
      await behind.libp2p.handle(
        TEST_PROTOCOL,
        async (stream) => {
          try {
            for await (const chunk of stream) stream.send(chunk)
            await stream.close()
          } catch {
            // the relay cut the connection under us
          }
        },
        { runOnLimitedConnection: true },
      )
      const requester = await node()
      const relayed = await requester.libp2p.dial(multiaddr(circuit), { signal: AbortSignal.timeout(30_000) })
      // What is left of the limit once the end-to-end Noise handshake went through the relay.
      const left = relayed.limits?.bytes
      assert.ok(left !== undefined && left > 0n && left <= BigInt(connectionDataBytes), `limit left: ${left}`)
      const stream = await relayed.newStream(TEST_PROTOCOL, {
        runOnLimitedConnection: true,
        signal: AbortSignal.timeout(30_000),
      })
      let echoed = 0
      const reading = (async () => {
        for await (const chunk of stream) echoed += chunk.byteLength
      })().catch(() => undefined)
      try {
        for (let i = 0; i < 64; i++) {
          if (!stream.send(new Uint8Array(1024)))
            await stream.onDrain({ signal: AbortSignal.timeout(30_000) })
        }
        await stream.close({ signal: AbortSignal.timeout(30_000) })
      } catch {
        // cut while sending
      }
      await reading
      return { echoed, connection: relayed }
    }

    const whole = await echoThrough(1024 * 1024)
    assert.equal(whole.echoed, 64 * 1024)
    assert.equal(whole.connection.status, 'open')
    const cut = await echoThrough(16 * 1024)
    assert.ok(cut.echoed < 16 * 1024, `echoed ${cut.echoed} bytes through a 16 KiB limit`)
    await waitFor(() => cut.connection.status !== 'open', 'the relay to close the connection', 30_000)
  })

  test('a restarted node reconnects to remembered peers without bootstrap', async () => {
    const dir = tempDir()
    const datastorePath = join(dir, 'datastore.db')
    const peer = await node()
    const identity = generateIdentity()
    const first = await node({ datastorePath, bootstrap: [peer.multiaddrs()[0]!] }, identity)
    await waitFor(() => first.connectionKind(peer.peerId) === 'direct', 'the bootstrap connection', 30_000)
    // Wait for identify to write the peer's addresses and protocols to the peer store.
    const deadline = Date.now() + 30_000
    while ((await first.libp2p.peerStore.get(peerIdFromString(peer.peerId))).protocols.length === 0) {
      assert.ok(Date.now() < deadline, 'identify did not complete within 30 s')
      await new Promise((r) => setTimeout(r, 50))
    }
    await first.stop()
    started.splice(started.indexOf(first), 1)

    const store = openDatastore(datastorePath)
    const keys: string[] = []
    for await (const k of store.queryKeys({ prefix: '/peers/' })) keys.push(k.toString())
    store.close()
    assert.ok(keys.length >= 1, 'no peer was written to disk')

    const second = await node({ datastorePath }, identity)
    await waitFor(
      () => second.connectionKind(peer.peerId) === 'direct',
      'a reconnection from the peer store',
      30_000,
    )
  })

  test('a node with the random walk on reaches peers its bootstrap list does not name', async () => {
    const hub = await node()
    const far = await node({ bootstrap: [hub.multiaddrs()[0]!] })
    await waitFor(() => hub.libp2p.getConnections().length > 0, 'far to join the hub', 30_000)
    const walker = await node({
      bootstrap: [hub.multiaddrs()[0]!],
      randomWalkMinConnections: 5,
      randomWalkIntervalMs: 200,
    })
    // In a mesh this small the DHT's own self-query already meets every peer; the test
    // below shows what the walk itself does.
    await waitFor(() => walker.connectionKind(far.peerId) !== undefined, 'the walker to reach far', 30_000)
    assert.ok(walker.libp2p.services.walkDiscovery, 'the random walk service is on')
  })

  test('the random walk dials walked-to peers until enough are connected, then stops walking', async () => {
    // libp2p's RandomWalk and ConnectionManager are internal components with no public
    // constructor: these stand-ins record what the service asks of them.
    const peers = Array.from({ length: 5 }, () => peerIdFromString(generateIdentity().id))
    const connected = new Set<string>([peers[0]!.toString()])
    const dialled: string[] = []
    let walks = 0
    const service = randomWalkDiscovery({ minConnections: 3, intervalMs: 20 })({
      logger: {
        forComponent: () => Object.assign(() => undefined, { error() {}, trace() {} }),
      } as unknown as ComponentLogger,
      randomWalk: {
        async *walk() {
          walks++
          for (const id of peers) yield { id, multiaddrs: [] }
        },
      },
      connectionManager: {
        getConnections: () => [...connected].map((p) => ({ remotePeer: peerIdFromString(p) })),
        openConnection: async (id: PeerId) => {
          dialled.push(id.toString())
          connected.add(id.toString())
        },
      } as unknown as ConnectionManager,
    })
    service.start()
    try {
      await waitFor(() => connected.size >= 3, 'three connections', 30_000)
      const walksWhenEnough = walks
      await new Promise((r) => setTimeout(r, 200))
      // The already connected peer is skipped, the next two are dialled, and no walk starts
      // while the node has enough connections.
      assert.deepEqual(dialled, [peers[1]!.toString(), peers[2]!.toString()])
      assert.equal(service.found, 2)
      assert.equal(walks, walksWhenEnough)
      connected.delete(peers[1]!.toString())
      await waitFor(() => connected.size >= 3, 'a replacement after a peer left', 30_000)
      assert.ok(walks > walksWhenEnough)
    } finally {
      service.stop()
    }
  })
})

describe('the SQLite datastore', () => {
  test('stores, reads, queries by prefix, batches and deletes', async () => {
    const store = openDatastore(join(tempDir(), 'ds.db'))
    try {
      const bytes = (s: string) => new TextEncoder().encode(s)
      store.put(new Key('/peers/a'), bytes('1'))
      store.put(new Key('/peers/b'), bytes('2'))
      store.put(new Key('/peersx/c'), bytes('3'))
      store.put(new Key('/peers/a'), bytes('1b'))
      assert.deepEqual(store.get(new Key('/peers/a')), bytes('1b'))
      assert.equal(store.has(new Key('/peers/z')), false)
      assert.throws(() => store.get(new Key('/peers/z')), { name: 'NotFoundError' })
      const found: string[] = []
      for await (const p of store.query({ prefix: '/peers/' })) found.push(p.key.toString())
      assert.deepEqual(found, ['/peers/a', '/peers/b'])
      const batch = store.batch()
      batch.put(new Key('/peers/c'), bytes('4'))
      batch.delete(new Key('/peers/a'))
      await batch.commit()
      const after: string[] = []
      for await (const k of store.queryKeys({ prefix: '/peers' })) after.push(k.toString())
      assert.deepEqual(after, ['/peers/b', '/peers/c', '/peersx/c'])
      store.delete(new Key('/peers/b'))
      assert.equal(store.has(new Key('/peers/b')), false)
    } finally {
      store.close()
    }
  })
})
