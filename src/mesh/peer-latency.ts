// Round-trip times to the peers in the capacity view, for `substrate peers` and for ranking
// workers by latency. libp2p's connection monitor already pings every connection (every 30 s,
// libp2p-node.ts) and keeps the round trip on the connection (`rtt`): that is read, and a peer
// is pinged here only while its connection has none yet (the first ~30 s), so no second ping
// stream per peer runs for ever. Only peers we are already connected to are measured:
// measuring must never dial half the mesh.

import { peerIdFromString } from '@libp2p/peer-id'
import type { CapacityGossip } from './capacity-gossip.ts'
import type { MeshNode } from './libp2p-node.ts'

export interface PeerLatency {
  start(): void
  stop(): void
  /** Last measured round trip to `peer` in ms, or undefined when not measured (yet). */
  latencyMs(peer: string): number | undefined
}

export function createPeerLatency(
  components: { mesh: MeshNode; capacity: Pick<CapacityGossip, 'view'> },
  init: { intervalMs?: number } = {},
): PeerLatency {
  const rtts = new Map<string, number>()
  let timer: NodeJS.Timeout | undefined
  let first: NodeJS.Timeout | undefined
  const measure = () => {
    const libp2p = components.mesh.libp2p
    const inView = new Set(components.capacity.view().map((e) => e.peer))
    for (const peer of rtts.keys()) if (!inView.has(peer)) rtts.delete(peer)
    for (const peer of inView) {
      const id = peerIdFromString(peer)
      const conns = libp2p.getConnections(id)
      if (conns.length === 0) continue
      const monitored = conns.map((c) => c.rtt).filter((rtt): rtt is number => rtt !== undefined)
      if (monitored.length > 0) {
        rtts.set(peer, Math.min(...monitored))
        continue
      }
      libp2p.services.ping
        .ping(id, { signal: AbortSignal.timeout(5_000) })
        .then((ms) => rtts.set(peer, ms))
        .catch(() => rtts.delete(peer))
    }
  }
  return {
    start() {
      timer = setInterval(measure, init.intervalMs ?? 15_000)
      timer.unref()
      first = setTimeout(measure, 500)
      first.unref()
    },
    stop() {
      clearTimeout(first)
      clearInterval(timer)
    },
    latencyMs: (peer) => rtts.get(peer),
  }
}
