// The node's libp2p host: one place that decides transports, encryption, muxing, discovery
// and limits, so the mesh subsystems (capacity gossip, the job protocol) only see a started
// host with `pubsub` and `dht` services. It runs under the node's own identity key, so the
// PeerId other peers dial is the id that signs every envelope.

import { noise } from '@chainsafe/libp2p-noise'
import { bootstrap } from '@libp2p/bootstrap'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { type GossipSub, gossipsub } from '@libp2p/gossipsub'
import { createTopicScoreParams } from '@libp2p/gossipsub/score'
import { type Identify, identify } from '@libp2p/identify'
import type { PeerId } from '@libp2p/interface'
import {
  type KadDHT,
  kadDHT,
  passthroughMapper,
  removePrivateAddressesMapper,
  removePublicAddressesMapper,
} from '@libp2p/kad-dht'
import { mdns } from '@libp2p/mdns'
import { type Ping, ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2p } from 'libp2p'
import { SubstrateError } from '../errors.ts'
import { type Identity, privateKeySeed } from '../identity/keys.ts'
import type { Logger } from '../logger.ts'

/** Every mesh protocol id starts with this, so a Substrate DHT never merges with IPFS's. */
export const PROTOCOL_PREFIX = '/substrate'
export const DHT_PROTOCOL = `${PROTOCOL_PREFIX}/kad/1.0.0`
export const CAPACITY_TOPIC = 'substrate/capacity/1'

// A type alias, not an interface: libp2p's ServiceMap constraint needs an index signature.
export type MeshServices = {
  identify: Identify
  ping: Ping
  dht: KadDHT
  pubsub: GossipSub
}
export type MeshLibp2p = Libp2p<MeshServices>

export interface MeshNodeInit {
  /** Multiaddrs to listen on; tests and the default use loopback only. */
  listen?: string[]
  /** Multiaddrs of known peers, each ending in `/p2p/<peer id>`. */
  bootstrap?: string[]
  /** mDNS discovery on the local network; off by default so tests never find each other by accident. */
  mdns?: boolean
  mdnsIntervalMs?: number
  /**
   * Which addresses the DHT keeps: `all` (loopback tests), `private` (a LAN mesh keeps only
   * private ones), `public` (the internet).
   */
  dhtAddresses?: 'all' | 'private' | 'public'
  maxConnections?: number
  /** Dial peers found by mDNS or bootstrap; off means discovery only fills the peer store. */
  dialOnDiscovery?: boolean
}

export interface MeshNode {
  readonly libp2p: MeshLibp2p
  /** The PeerId string; equal to `identity.id`. */
  readonly peerId: string
  /** Addresses other peers can dial, each with `/p2p/<id>`. */
  multiaddrs(): string[]
  /** Connects to a peer by multiaddr (with `/p2p/<id>`); bounded by `timeoutMs`. */
  dial(addr: string, timeoutMs?: number): Promise<void>
  start(): Promise<void>
  stop(): Promise<void>
}

const peerInfoMappers = {
  all: passthroughMapper,
  private: removePublicAddressesMapper,
  public: removePrivateAddressesMapper,
} as const

export async function createMeshNode(
  components: { identity: Identity; logger: Logger },
  init: MeshNodeInit = {},
): Promise<MeshNode> {
  const log = components.logger.child('libp2p')
  const privateKey = await generateKeyPairFromSeed('Ed25519', privateKeySeed(components.identity))
  const bootstrapList = init.bootstrap ?? []

  const libp2p = await createLibp2p({
    start: false,
    privateKey,
    addresses: { listen: init.listen ?? ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [
      ...(bootstrapList.length > 0 ? [bootstrap({ list: bootstrapList })] : []),
      ...(init.mdns === true ? [mdns({ interval: init.mdnsIntervalMs ?? 10_000 })] : []),
    ],
    connectionManager: {
      maxConnections: init.maxConnections ?? 100,
      maxIncomingPendingConnections: 10,
      dialTimeout: 10_000,
    },
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        // A private mesh has no public DHT servers to lean on: every node serves.
        clientMode: false,
        peerInfoMapper: peerInfoMappers[init.dhtAddresses ?? 'all'],
      }),
      pubsub: gossipsub({
        // Capacity records are re-published every few seconds; a node alone on the topic
        // must not treat that as an error.
        allowPublishToZeroTopicPeers: true,
        scoreParams: {
          topics: {
            // Every invalid record costs its forwarder score, so a spammer is pruned,
            // then graylisted; decay lets an honest peer with one bad relay recover.
            [CAPACITY_TOPIC]: createTopicScoreParams({
              topicWeight: 1,
              invalidMessageDeliveriesWeight: -100,
              invalidMessageDeliveriesDecay: 0.5,
            }),
          },
        },
      }),
    },
  })
  const peerId = libp2p.peerId.toString()
  if (peerId !== components.identity.id) {
    throw new Error(`libp2p peer id ${peerId} does not match identity ${components.identity.id}`)
  }

  // Discovery only records addresses; a mesh wants the connections too (within limits).
  const onDiscovery = (evt: CustomEvent<{ id: PeerId }>) => {
    const id = evt.detail.id
    if (id.equals(libp2p.peerId) || libp2p.getConnections(id).length > 0) return
    libp2p.dial(id, { signal: AbortSignal.timeout(10_000) }).catch((err: unknown) => {
      log.debug('dial after discovery failed', { peer: id.toString(), error: String(err) })
    })
  }

  return {
    libp2p,
    peerId,
    multiaddrs: () => libp2p.getMultiaddrs().map((ma) => ma.toString()),
    async dial(addr, timeoutMs = 10_000) {
      try {
        await libp2p.dial(multiaddr(addr), { signal: AbortSignal.timeout(timeoutMs) })
      } catch (cause) {
        throw new SubstrateError('E_PEER_GONE', `cannot reach peer ${addr}: ${String(cause)}`, { cause })
      }
    },
    async start() {
      if (init.dialOnDiscovery ?? true) libp2p.addEventListener('peer:discovery', onDiscovery)
      await libp2p.start()
      log.info('libp2p started', { peer: peerId, addrs: libp2p.getMultiaddrs().map(String) })
    },
    async stop() {
      libp2p.removeEventListener('peer:discovery', onDiscovery)
      await libp2p.stop()
    },
  }
}
