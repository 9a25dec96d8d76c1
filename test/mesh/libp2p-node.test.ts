import assert from 'node:assert/strict'
import { type AddressInfo, createServer } from 'node:net'
import { after, before, describe, test } from 'node:test'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { SubstrateError } from '../../src/errors.ts'
import { generateIdentity, type Identity, privateKeySeed } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMeshNode } from '../../src/mesh/libp2p-node.ts'
import { startPeers, stopPeers, type TestPeer, waitFor } from './helpers.ts'

/** A loopback port nothing listens on right now. */
async function freeLoopbackPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

describe('identity seed for libp2p', () => {
  test('libp2p derives the same peer id from the identity seed', async () => {
    const identity = generateIdentity()
    const seed = privateKeySeed(identity)
    assert.equal(seed.length, 32)
    const key = await generateKeyPairFromSeed('Ed25519', seed)
    assert.deepEqual(key.publicKey.raw, identity.publicKey)
  })

  test('an identity object not made by identity/keys has no seed', () => {
    const impostor: Identity = { ...generateIdentity() }
    assert.throws(() => privateKeySeed(impostor), SubstrateError)
  })
})

describe('mesh libp2p node', () => {
  let peers: TestPeer[] = []
  before(async () => {
    peers = await startPeers(2)
  })
  after(() => stopPeers(peers))

  test('runs under the identity peer id and listens on loopback only', () => {
    for (const p of peers) {
      assert.equal(p.mesh.peerId, p.identity.id)
      const addrs = p.mesh.multiaddrs()
      assert.ok(addrs.length > 0)
      for (const a of addrs) assert.match(a, /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)
    }
  })

  test('two nodes connect and ping each other over Noise and Yamux', async () => {
    const [a, b] = [peers[0]!, peers[1]!]
    // Generous: on this shared 2-core machine a load average above 20 stretches the first
    // stream on a new connection to seconds.
    const rtt = await a.mesh.libp2p.services.ping.ping(peerIdFromString(b.identity.id), {
      signal: AbortSignal.timeout(30_000),
    })
    assert.ok(rtt >= 0 && rtt < 30_000, `ping took ${rtt} ms`)
    const conn = a.mesh.libp2p.getConnections(peerIdFromString(b.identity.id))[0]
    assert.ok(conn)
    assert.equal(conn.encryption, '/noise')
    assert.equal(conn.multiplexer, '/yamux/1.0.0')
  })

  test('pings of the connection monitor, the DHT and peer latency at once do not fail (nor drop the link)', async () => {
    const [a, b] = [peers[0]!, peers[1]!]
    await a.mesh.dial(b.mesh.multiaddrs()[0]!, 10_000)
    const conn = a.mesh.libp2p.getConnections(peerIdFromString(b.identity.id))[0]
    assert.ok(conn)
    // Two pings in flight on the connection (say, the monitor's and a DHT check), then a third.
    const held = await Promise.all(
      [0, 1].map(() => conn.newStream('/ipfs/ping/1.0.0', { signal: AbortSignal.timeout(30_000) })),
    )
    try {
      const rtt = await a.mesh.libp2p.services.ping.ping(peerIdFromString(b.identity.id), {
        signal: AbortSignal.timeout(30_000),
      })
      assert.ok(rtt >= 0)
      assert.equal(conn.status, 'open')
    } finally {
      for (const s of held) s.abort(new Error('done'))
    }
  })

  test('a node bootstraps from a configured multiaddr', async () => {
    const identity = generateIdentity()
    const mesh = await createMeshNode(
      { identity, logger: silentLogger },
      { bootstrap: [peers[0]!.mesh.multiaddrs()[0]!] },
    )
    await mesh.start()
    try {
      const target = peerIdFromString(peers[0]!.identity.id)
      const deadline = Date.now() + 5_000
      while (mesh.libp2p.getConnections(target).length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20))
      }
      assert.ok(mesh.libp2p.getConnections(target).length > 0, 'bootstrap peer was not dialled')
    } finally {
      await mesh.stop()
    }
  })

  test('a node whose bootstrap peer was not up at its start joins it once it is', async () => {
    const port = await freeLoopbackPort()
    const early = generateIdentity()
    const late = generateIdentity()
    const mesh = await createMeshNode(
      { identity: early, logger: silentLogger },
      { bootstrap: [`/ip4/127.0.0.1/tcp/${port}/p2p/${late.id}`], rejoinIntervalMs: 300 },
    )
    const bootstrapPeer = await createMeshNode(
      { identity: late, logger: silentLogger },
      { listen: [`/ip4/127.0.0.1/tcp/${port}`], relayClient: false },
    )
    await mesh.start()
    try {
      await new Promise((r) => setTimeout(r, 1_000))
      assert.equal(mesh.libp2p.getConnections().length, 0, 'nothing to connect to yet')
      await bootstrapPeer.start()
      await waitFor(
        () => mesh.libp2p.getConnections(peerIdFromString(late.id)).length > 0,
        'a connection to the late bootstrap peer',
        30_000,
      )
    } finally {
      await mesh.stop()
      await bootstrapPeer.stop()
    }
  })

  test('dialling an unreachable address is a typed error within the timeout', async () => {
    const bogus = `/ip4/127.0.0.1/tcp/1/p2p/${generateIdentity().id}`
    await assert.rejects(peers[0]!.mesh.dial(bogus, 2_000), (err: unknown) => {
      assert.ok(err instanceof SubstrateError)
      assert.equal(err.code, 'E_PEER_GONE')
      return true
    })
  })
})
