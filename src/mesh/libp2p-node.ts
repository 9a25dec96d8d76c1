// The node's libp2p host: one place that decides transports, encryption, muxing, discovery,
// NAT traversal and limits, so the mesh subsystems (capacity gossip, the job protocol) only
// see a started host with `pubsub` and `dht` services. It runs under the node's own identity
// key, so the PeerId other peers dial is the id that signs every envelope.
//
// Real networks: TCP and WebSockets listeners; AutoNAT (v2) asks peers to dial our public
// addresses back, and only confirmed ones are shared; every node can dial and listen through circuit relay v2 (it reserves a slot on a
// relay it finds, and advertises the /p2p-circuit address), and DCUtR tries to upgrade a
// relayed connection to a direct one by hole punching. Serving as a relay is opt-in, with
// limits on reservations and on each relayed connection. The peer store lives on disk when
// `datastorePath` is set, so a restart reconnects to known peers without bootstrap.

import { noise } from '@chainsafe/libp2p-noise'
import { autoNATv2 } from '@libp2p/autonat-v2'
import { bootstrap } from '@libp2p/bootstrap'
import { type CircuitRelayService, circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { dcutr } from '@libp2p/dcutr'
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
import { type Ping, ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2p } from 'libp2p'
import { SubstrateError } from '../errors.ts'
import { type Identity, privateKeySeed } from '../identity/keys.ts'
import type { Logger } from '../logger.ts'
import { openDatastore } from '../store/datastore.ts'
import { isWebSocketsAddress, lazyWebSockets } from './lazy-websockets.ts'
import {
  type RandomWalkDiscovery,
  type Reachability,
  type ReachabilityService,
  randomWalkDiscovery,
  reachabilityService,
  type WalkThrottle,
  walkThrottle,
} from './libp2p-services.ts'
import { createNoiseCrypto } from './noise-crypto.ts'
import {
  type LinkStats,
  MESH_PEER_TAG,
  type PeerKeeper,
  type PeerKeeperInit,
  peerKeeper,
} from './peer-keeper.ts'
import { createTrafficMeter, type TrafficSnapshot } from './traffic-meter.ts'

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
  autoNAT: unknown
  dcutr: unknown
  reachability: ReachabilityService
  walkThrottle: WalkThrottle
  /** Redials known mesh peers whose link dropped (absent when `keepPeers` is false). */
  peerKeeper?: PeerKeeper
  // Not `randomWalk`: a service is also registered as a component under its key, and that one
  // would replace libp2p's RandomWalk component that relay discovery and AutoNAT walk with.
  walkDiscovery?: RandomWalkDiscovery
  relay?: CircuitRelayService
}
export type MeshLibp2p = Libp2p<MeshServices>

/**
 * gossipsub tuned for meshes of a few to a few dozen nodes (its defaults, D 6 / Dlo 4 / Dhi 12 /
 * Dlazy 6 and flood publishing, suit networks of thousands). Measured
 * with `bench/mesh-discovery.ts` (BENCHMARKS.md, "Discovery and gossip cost"):
 * - Each node forwards every message it receives to its mesh peers, so each message crosses
 *   ~N·D links and costs each node about D copies in and out: the mesh degree multiplies every
 *   topic's cost. D 3 keeps a random mesh connected (a node has ≥ 2 links, ≤ 4) and IHAVE
 *   gossip to 2 more peers each heartbeat repairs what a lost link misses.
 * - Our own messages go to our mesh peers like any other, not to every peer (flood
 *   publishing sent each record N − 1 times at its source).
 * - IHAVE (every heartbeat, to Dlazy peers, the ids of the messages of the last mcacheGossip
 *   heartbeats) costs Dlazy × messages/s × mcacheGossip × id size per node: 2 and 2 instead
 *   of 6 and 3. (Shorter message ids were tried and dropped: with them ledger sync's
 *   lying-heads test pulled 3 times for one lie instead of ≤ 2, not understood in time.)
 */
export const SMALL_MESH_GOSSIP = {
  D: 3,
  Dlo: 2,
  Dhi: 4,
  Dout: 1,
  Dscore: 1,
  Dlazy: 2,
  mcacheGossip: 2,
  floodPublish: false,
} as const

export interface RelayServeInit {
  /** Reservations this relay holds at once. */
  maxReservations?: number
  /** How long a reservation lasts before the client must refresh it. */
  reservationTtlMs?: number
  /** Each relayed connection is closed after this long… */
  connectionDurationMs?: number
  /** …or after this many bytes (both directions together). */
  connectionDataBytes?: number
}

/** Limits a relay applies when `relay.serve` is on and none are configured. */
export const RELAY_DEFAULTS = {
  maxReservations: 32,
  reservationTtlMs: 60 * 60_000,
  connectionDurationMs: 10 * 60_000,
  connectionDataBytes: 64 * 1024 * 1024,
} as const satisfies Required<RelayServeInit>

export interface MeshNodeInit {
  /** Multiaddrs to listen on (TCP, and WebSockets with `/ws`); tests and the default use loopback only. */
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
  /** Reserve a slot on a relay found in the mesh and advertise the relayed address (default on). */
  relayClient?: boolean
  /** Serve as a circuit relay for other nodes: off unless set. */
  relayServe?: RelayServeInit | false
  /** Walk the DHT from random keys while fewer than this many peers are connected (0: off). */
  randomWalkMinConnections?: number
  randomWalkIntervalMs?: number
  /**
   * SQLite file for the libp2p datastore (peer store, DHT records): with it, known peers and
   * their addresses survive a restart. Without it, everything is in memory.
   */
  datastorePath?: string
  /** After start, dial at most this many peers remembered from the last run (default 8). */
  reconnectPeers?: number
  /**
   * While connected to no one, try the bootstrap peers (then remembered ones) again this often
   * (default 10 s): a first dial lost to a busy peer or a late start must not leave a node alone.
   */
  rejoinIntervalMs?: number
  /**
   * Redial known mesh peers (they spoke a Substrate protocol with us) when their link drops,
   * with a jittered, capped backoff (peer-keeper.ts); `false` turns it off.
   */
  keepPeers?: PeerKeeperInit | false
}

export interface MeshNode {
  readonly libp2p: MeshLibp2p
  /** The PeerId string; equal to `identity.id`. */
  readonly peerId: string
  /** Addresses other peers can dial, each with `/p2p/<id>`. */
  multiaddrs(): string[]
  /** Connects to a peer by multiaddr (with `/p2p/<id>`); bounded by `timeoutMs`. */
  dial(addr: string, timeoutMs?: number): Promise<void>
  /** How others can reach this node: AutoNAT's verdicts and relay reservations. */
  reachability(): NodeReachability
  /** How we are connected to a peer right now: directly, only through a relay, or not at all. */
  connectionKind(peer: string): 'direct' | 'relayed' | undefined
  /** Bytes sent and received so far: on the wire, per protocol, and gossipsub's by part. */
  traffic(): TrafficSnapshot
  /** Connections now (per peer, spares) and the redials of dropped mesh links since start. */
  links(): LinkStats | undefined
  start(): Promise<void>
  stop(): Promise<void>
}

export interface NodeReachability extends Reachability {
  /** When serving as a relay: how many reservations we hold for others. */
  relayServing: { reservations: number; maxReservations: number } | null
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

  const relayServe =
    init.relayServe === false || init.relayServe === undefined
      ? undefined
      : { ...RELAY_DEFAULTS, ...init.relayServe }
  const listen = [
    ...(init.listen ?? ['/ip4/127.0.0.1/tcp/0']),
    // Search the mesh for a relay and listen through it (one reservation).
    ...(init.relayClient === false ? [] : ['/p2p-circuit']),
  ]
  const datastore = init.datastorePath === undefined ? undefined : openDatastore(init.datastorePath)
  const randomWalkMin = init.randomWalkMinConnections ?? 0
  const traffic = createTrafficMeter()
  const webSockets = lazyWebSockets()
  // Off by default, so its code (multicast DNS, a UDP socket) is loaded only when asked for.
  const mdns = init.mdns === true ? (await import('@libp2p/mdns')).mdns : undefined

  let libp2p: MeshLibp2p
  try {
    libp2p = await createLibp2p({
      start: false,
      privateKey,
      metrics: () => traffic.metrics(),
      ...(datastore === undefined ? {} : { datastore }),
      // Remembered addresses outlive a night offline; libp2p's default forgets them after an hour.
      peerStore: { maxAddressAge: 7 * 24 * 3_600_000, maxPeerAge: 7 * 24 * 3_600_000 },
      addresses: { listen },
      transports: [
        tcp(),
        webSockets.transport,
        circuitRelayTransport({ reservationCompletionTimeout: 10_000 }),
      ],
      // Noise's own cipher calls, with each session key imported once (noise-crypto.ts).
      connectionEncrypters: [noise({ crypto: createNoiseCrypto() })],
      streamMuxers: [yamux()],
      peerDiscovery: [
        ...(bootstrapList.length > 0 ? [bootstrap({ list: bootstrapList })] : []),
        ...(mdns === undefined ? [] : [mdns({ interval: init.mdnsIntervalMs ?? 10_000 })]),
      ],
      // Pings every connection (a dead one is closed) and keeps its round trip, which
      // peer-latency.ts reads; libp2p's 10 s default is a ping stream per connection per side
      // every 10 s, a large share of a quiet mesh's traffic.
      // A ping that takes over 10 s (libp2p's floor is 5 s) aborts the connection: a process
      // starved of CPU for a few seconds no longer loses its links (peer-keeper.ts redials the
      // ones that are lost anyway).
      connectionMonitor: { pingInterval: 30_000, pingTimeout: { minTimeout: 10_000 } },
      connectionManager: {
        maxConnections: init.maxConnections ?? 100,
        maxIncomingPendingConnections: 10,
        dialTimeout: 10_000,
      },
      services: {
        identify: identify(),
        // Three users share /ipfs/ping on a connection: libp2p's connection monitor, kad-dht's
        // routing-table checks and peer-latency.ts. libp2p's limits (1 outbound, 2 inbound per
        // connection) made the monitor's ping fail whenever another was in flight, and a failed
        // monitor ping aborts the connection: half the links lost in a 20-daemon run.
        ping: ping({ maxOutboundStreams: 4, maxInboundStreams: 4 }),
        // AutoNAT v2: the peer dials back on a new connection and proves it with a nonce (v1
        // in this release closes the connection the request came on when it is already open).
        autoNAT: autoNATv2(),
        dcutr: dcutr(),
        reachability: reachabilityService(),
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
          ...SMALL_MESH_GOSSIP,
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
        walkThrottle: walkThrottle(),
        ...(init.keepPeers === false ? {} : { peerKeeper: peerKeeper({ logger: log, ...init.keepPeers }) }),
        ...(randomWalkMin > 0
          ? {
              walkDiscovery: randomWalkDiscovery({
                minConnections: randomWalkMin,
                ...(init.randomWalkIntervalMs === undefined ? {} : { intervalMs: init.randomWalkIntervalMs }),
              }),
            }
          : {}),
        ...(relayServe === undefined
          ? {}
          : {
              relay: circuitRelayServer({
                reservations: {
                  maxReservations: relayServe.maxReservations,
                  reservationTtl: relayServe.reservationTtlMs,
                  applyDefaultLimit: true,
                  defaultDurationLimit: relayServe.connectionDurationMs,
                  defaultDataLimit: BigInt(relayServe.connectionDataBytes),
                },
              }),
            }),
      },
    })
    // libp2p opens listeners synchronously as it starts: load the transport of /ws ones now.
    if (listen.some((addr) => isWebSocketsAddress(multiaddr(addr)))) await webSockets.load()
  } catch (err) {
    datastore?.close()
    throw err
  }
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

  // Peers remembered from the last run (the peer store is on disk): dial a few, so a restart
  // rejoins the mesh even when the bootstrap peers are gone. The DHT and gossip do the rest.
  const reconnect = async (max: number) => {
    const started = performance.now()
    const known = await libp2p.peerStore.all({
      filters: [(p) => p.addresses.length > 0 && !p.id.equals(libp2p.peerId)],
    })
    // Mesh peers first (they spoke our protocols before), in random order within each group.
    const picked = known
      .map((p) => ({ p, key: (p.tags.has(MESH_PEER_TAG) ? 0 : 1) + Math.random() }))
      .sort((a, b) => a.key - b.key)
      .map(({ p }) => p)
      .slice(0, max)
    const results = await Promise.allSettled(
      picked.map((p) => libp2p.dial(p.id, { signal: AbortSignal.timeout(10_000) })),
    )
    log.info('reconnected to remembered peers', {
      known: known.length,
      tried: picked.length,
      connected: results.filter((r) => r.status === 'fulfilled').length,
      ms: Math.round(performance.now() - started),
    })
  }

  // Bootstrap's one dial at start can fail (the peer starts later, or is too busy to answer in
  // time); libp2p does not retry it. A node connected to no one keeps trying.
  let rejoining = false
  const rejoin = async () => {
    if (rejoining || libp2p.getConnections().length > 0) return
    rejoining = true
    try {
      const results = await Promise.allSettled(
        bootstrapList.map((addr) => libp2p.dial(multiaddr(addr), { signal: AbortSignal.timeout(10_000) })),
      )
      const joined = results.filter((r) => r.status === 'fulfilled').length
      if (joined > 0) log.info('joined the mesh through a bootstrap peer on a retry', { joined })
      else if (datastore !== undefined) await reconnect(init.reconnectPeers ?? 8)
    } finally {
      rejoining = false
    }
  }
  let rejoinTimer: NodeJS.Timeout | undefined

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
    reachability() {
      const relay = libp2p.services.relay
      return {
        ...libp2p.services.reachability.reachability(),
        relayServing:
          relay === undefined || relayServe === undefined
            ? null
            : { reservations: relay.reservations.size, maxReservations: relayServe.maxReservations },
      }
    },
    traffic: () => traffic.snapshot(),
    links: () => libp2p.services.peerKeeper?.stats(),
    connectionKind(peer) {
      const conns = libp2p
        .getConnections()
        .filter((c) => c.remotePeer.toString() === peer && c.status === 'open')
      if (conns.length === 0) return undefined
      return conns.some((c) => c.limits === undefined && !c.remoteAddr.toString().includes('/p2p-circuit'))
        ? 'direct'
        : 'relayed'
    },
    async start() {
      if (init.dialOnDiscovery ?? true) libp2p.addEventListener('peer:discovery', onDiscovery)
      await libp2p.start()
      log.info('libp2p started', {
        peer: peerId,
        addrs: libp2p.getMultiaddrs().map(String),
        ...(relayServe === undefined ? {} : { relay: relayServe }),
      })
      if (datastore !== undefined) void reconnect(init.reconnectPeers ?? 8)
      if (bootstrapList.length > 0 || datastore !== undefined) {
        rejoinTimer = setInterval(() => {
          rejoin().catch((err: unknown) => log.debug('rejoin failed', { error: String(err) }))
        }, init.rejoinIntervalMs ?? 10_000)
        rejoinTimer.unref()
      }
    },
    async stop() {
      clearInterval(rejoinTimer)
      libp2p.removeEventListener('peer:discovery', onDiscovery)
      await libp2p.stop()
      datastore?.close()
    },
  }
}
