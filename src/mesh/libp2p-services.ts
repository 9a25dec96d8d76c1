// Small libp2p services of our own, built as libp2p builds its services so they get the
// host's internal components: `walkThrottle` paces the DHT random walk every walker shares,
// `randomWalkDiscovery` keeps the node connected to enough peers by walking the DHT from
// random keys (that shared RandomWalk component, the one circuit relay discovery and AutoNAT
// also use), and `reachability` reports what the node knows of how others can reach it: its
// addresses with AutoNAT's verdict on each, and the relays it holds a reservation on.

import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type {
  AbortOptions,
  ComponentLogger,
  PeerId,
  PeerInfo,
  PeerRouting,
  PeerStore,
  Startable,
} from '@libp2p/interface'
import type { AddressManager, ConnectionManager, RandomWalk } from '@libp2p/interface-internal'
import type { KadDHT } from '@libp2p/kad-dht'
import { isPrivate } from '@libp2p/utils'
import type { Multiaddr } from '@multiformats/multiaddr'
import { Circuit } from '@multiformats/multiaddr-matcher'

export interface RandomWalkInit {
  /** Walk while the node has fewer connections than this. */
  minConnections: number
  /** How often to check. */
  intervalMs?: number
  /** A single walk gives up after this long. */
  walkTimeoutMs?: number
}

export interface RandomWalkDiscovery extends Startable {
  /** Peers dialled because a walk found them, since start. */
  readonly found: number
}

export function randomWalkDiscovery(init: RandomWalkInit) {
  return (components: {
    randomWalk: RandomWalk
    connectionManager: ConnectionManager
    logger: ComponentLogger
  }): RandomWalkDiscovery => {
    const log = components.logger.forComponent('substrate:random-walk')
    let timer: NodeJS.Timeout | undefined
    let running: AbortController | undefined
    let found = 0
    const connected = () =>
      new Set(components.connectionManager.getConnections().map((c) => c.remotePeer.toString()))

    const walkOnce = async () => {
      if (connected().size >= init.minConnections || running !== undefined) return
      running = new AbortController()
      const signal = AbortSignal.any([running.signal, AbortSignal.timeout(init.walkTimeoutMs ?? 10_000)])
      try {
        for await (const peer of components.randomWalk.walk({ signal })) {
          const peers = connected()
          if (peers.size >= init.minConnections) break
          if (peers.has(peer.id.toString())) continue
          found++
          await components.connectionManager.openConnection(peer.id, { signal }).catch((err: unknown) => {
            log('dial of walked-to peer %p failed: %s', peer.id, String(err))
          })
        }
      } catch (err) {
        if (!signal.aborted) log('random walk failed: %s', String(err))
      } finally {
        running = undefined
      }
    }

    return {
      get found() {
        return found
      },
      start() {
        const every = init.intervalMs ?? 30_000
        const tick = () => {
          timer = setTimeout(() => {
            void walkOnce().finally(tick)
          }, every)
          timer.unref()
        }
        tick()
      },
      stop() {
        clearTimeout(timer)
        running?.abort()
      },
    }
  }
}

export interface WalkThrottleInit {
  /** Gap after a walk query that met a peer we were not connected to (and before the first). */
  minGapMs?: number
  /** The gap doubles after every query that met no one new, up to this. */
  maxGapMs?: number
}

export interface WalkThrottle extends Startable {
  /** DHT queries walked since start. */
  readonly queries: number
  /** The wait before the next query may start. */
  readonly gapMs: number
}

/**
 * Replaces libp2p's RandomWalk component with a paced one. libp2p's walks the DHT in a loop
 * with no pause for as long as anyone wants peers: circuit relay discovery wants a relay for
 * as long as it has none, so in a mesh without relays every node ran DHT queries back to back
 * forever (15–50 KB/s per node measured at 3 nodes, and CPU). Here every walker shares one
 * pace: at most one query per gap, the gap doubling while queries meet only peers we are
 * already connected to or met before (a small mesh, fully known; an undialable peer met
 * again is no news) and back to the minimum once one meets someone new. Walkers read the component when they walk, so replacing it at construction
 * reaches all of them (relay discovery, AutoNAT, `randomWalkDiscovery`).
 *
 * A query asks the DHT itself, not libp2p's PeerRouting: that one looks up the addresses of
 * every peer the DHT answers with by a further DHT query each (`findPeer`, cache off), and the
 * DHT answers with routing-table entries, which carry no addresses, so one walk query in a
 * 10-node mesh cost ~90 FIND_NODE requests instead of ~9 (measured: 538 of the 538 FIND_NODE
 * a 10-node mesh sent at rest in a minute came from 6 walk queries). The addresses are in
 * the peer store already (every DHT answer's peers are put there as it arrives).
 */
export function walkThrottle(init: WalkThrottleInit = {}) {
  return (components: {
    randomWalk: RandomWalk
    peerRouting: PeerRouting
    peerStore: PeerStore
    connectionManager: ConnectionManager
    peerId: PeerId
    /** Kad-DHT, when the node runs it as the service `dht` (services are components too). */
    dht?: KadDHT
  }): WalkThrottle => {
    const minGapMs = init.minGapMs ?? 10_000
    const maxGapMs = init.maxGapMs ?? 10 * 60_000
    let gapMs = minGapMs
    let nextAt = 0
    let queries = 0
    /** Settles when the query in flight ends: one query at a time, across walkers. */
    let querying: Promise<void> | undefined
    /** Peers walks have met: a peer met again (connected or not, e.g. undialable) is not news. */
    const met = new Set<string>()
    let shutdown = new AbortController()

    async function* walk(options?: AbortOptions): AsyncGenerator<PeerInfo> {
      const signal =
        options?.signal === undefined ? shutdown.signal : AbortSignal.any([shutdown.signal, options.signal])
      while (true) {
        signal.throwIfAborted()
        if (querying !== undefined) {
          await untilSettled(querying, signal)
          continue
        }
        const wait = nextAt - Date.now()
        if (wait > 0) {
          await sleep(wait, undefined, { signal })
          continue // another walker may have taken this turn
        }
        let release = () => {}
        querying = new Promise<void>((resolve) => {
          release = resolve
        })
        queries++
        let metSomeoneNew = false
        try {
          for await (const peer of closestPeers(randomBytes(32), signal)) {
            const id = peer.id.toString()
            if (
              !met.has(id) &&
              !peer.id.equals(components.peerId) &&
              components.connectionManager.getConnections(peer.id).length === 0
            )
              metSomeoneNew = true
            if (met.size >= 4096) met.clear()
            met.add(id)
            yield peer
          }
        } finally {
          gapMs = metSomeoneNew ? minGapMs : Math.min(gapMs * 2, maxGapMs)
          nextAt = Date.now() + gapMs
          querying = undefined
          release()
        }
      }
    }

    /** The DHT's closest peers to `key`, with their addresses from the peer store. */
    async function* closestPeers(key: Uint8Array, signal: AbortSignal): AsyncGenerator<PeerInfo> {
      let dht: KadDHT | undefined
      try {
        dht = components.dht // libp2p's components throw for a service that is not there
      } catch {}
      if (dht === undefined) {
        yield* components.peerRouting.getClosestPeers(key, { signal })
        return
      }
      for await (const event of dht.getClosestPeers(key, { signal })) {
        if (event.name !== 'FINAL_PEER') continue
        let multiaddrs = event.peer.multiaddrs
        if (multiaddrs.length === 0) {
          const stored = await components.peerStore.get(event.peer.id).catch(() => undefined)
          multiaddrs = stored?.addresses.map((a) => a.multiaddr) ?? []
        }
        if (multiaddrs.length > 0) yield { id: event.peer.id, multiaddrs }
      }
    }

    ;(components as { randomWalk: RandomWalk }).randomWalk = { walk }
    return {
      get queries() {
        return queries
      },
      get gapMs() {
        return gapMs
      },
      start() {
        shutdown = new AbortController()
      },
      stop() {
        shutdown.abort()
      },
    }
  }
}

/** Waits for `promise`, or rejects when `signal` aborts first (and leaves no listener behind). */
function untilSettled(promise: Promise<void>, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    void promise.then(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    })
  })
}

export interface AddressInfo {
  addr: string
  /** `transport`: a listen address; `observed`: what peers saw; `ip-mapping`/`dns-mapping`: configured. */
  type: string
  /** Confirmed dialable by AutoNAT (or configured as such); only these are shared beyond the listen addresses. */
  verified: boolean
  /** A relayed address: we hold a reservation on the relay in it. */
  relayed: boolean
  public: boolean
}

export interface Reachability {
  /**
   * `public`: a public address AutoNAT confirmed; `relayed`: reachable through a relay
   * reservation; `private`: only private or unconfirmed addresses (a LAN, loopback, or a NAT
   * no one has confirmed through).
   */
  status: 'public' | 'relayed' | 'private'
  addresses: AddressInfo[]
  /** Peer ids of the relays this node holds a reservation on. */
  relays: string[]
}

export interface ReachabilityService {
  reachability(): Reachability
}

function relayOf(ma: Multiaddr): string | undefined {
  const parts = ma.toString().split('/p2p-circuit')[0]?.split('/p2p/')
  return parts !== undefined && parts.length > 1 ? parts[parts.length - 1] : undefined
}

export function reachabilityService() {
  return (components: { addressManager: AddressManager }): ReachabilityService => ({
    reachability() {
      const addresses = components.addressManager.getAddressesWithMetadata().map((a) => {
        const relayed = Circuit.matches(a.multiaddr)
        return {
          addr: a.multiaddr.toString(),
          type: a.type,
          verified: a.verified,
          relayed,
          public: !relayed && !isPrivate(a.multiaddr),
        }
      })
      const relays = [
        ...new Set(
          components.addressManager
            .getAddressesWithMetadata()
            .filter((a) => Circuit.matches(a.multiaddr))
            .map((a) => relayOf(a.multiaddr))
            .filter((id): id is string => id !== undefined),
        ),
      ].sort()
      const status = addresses.some((a) => a.public && a.verified)
        ? 'public'
        : relays.length > 0
          ? 'relayed'
          : 'private'
      return { status, addresses, relays }
    },
  })
}
