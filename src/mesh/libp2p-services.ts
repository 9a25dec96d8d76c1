// Two small libp2p services of our own, built as libp2p builds its services so they get
// the host's internal components: `randomWalkDiscovery` keeps the node connected to enough
// peers by walking the DHT from random keys (libp2p's shared RandomWalk component, the one
// circuit relay discovery and AutoNAT also use), and `reachability` reports what the node
// knows of how others can reach it: its addresses with AutoNAT's verdict on each, and the
// relays it holds a reservation on.

import type { ComponentLogger, Startable } from '@libp2p/interface'
import type { AddressManager, ConnectionManager, RandomWalk } from '@libp2p/interface-internal'
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
