// Keeps the links to known mesh peers. libp2p itself forgets a peer once its connection is
// gone: the connection monitor aborts a connection whose ping times out (a starved process, a
// partition), and nothing dials it again unless discovery happens to report it once more.
// kad-dht marks its 20 closest peers KEEP_ALIVE, which libp2p's reconnect queue redials
// five times at once from both sides (1, 2, 4, 8, 16 s, no jitter, so both ends dial each
// other together and make two connections) and then drops the mark for good, so after a
// partition longer than that no one redials at all. This service replaces it:
//   - a mesh peer is one that identified with a Substrate protocol (`/substrate/…`); it is
//     tagged in the peer store (`substrate-mesh`, value 100, so the connection pruner closes
//     its connections last; the tag lives on disk with the peer store);
//   - when the last connection to a mesh peer closes, the peer is dialled again by peer id
//     (its stored addresses), with a jittered backoff that doubles up to a cap, and given up
//     after a bounded number of attempts (a peer gone for good costs a few dials, not a loop);
//   - one side dials first: the one with the smaller peer id waits one base delay, the other
//     three, so the two ends of a dropped link seldom dial each other at once;
//   - a connection we closed on purpose (hang-up, pruning) is not redialled; one the remote
//     ended (a clean close, or a reset as it closed: it stopped, hung up on us, or aborted
//     and redials itself) is redialled after a longer first wait; one that failed here (our
//     connection monitor aborted it, or the network timed out) soon;
//   - a redial that succeeds means the network is back (a healed partition): the other
//     pending redials are pulled in to the base delay (attempt counts stay, so still bounded);
//   - one connection per peer: when two ends dial each other at once (or anything else opens a
//     second direct connection), the spare one is closed by the end that dialled it. Both ends
//     agree which one stays without a message: the one dialled by the smaller peer id, else the
//     oldest. A spare connection still carrying an application stream (a job, a pull) is left
//     until it is idle. gossipsub keeps one outbound stream per peer on whichever connection
//     came first and never moves it, so after a spare closes, both ends re-run identify on the
//     connection that stays, which tells gossipsub (and every other topology) to open its
//     streams there if they were on the spare.
// kad-dht's KEEP_ALIVE mark is removed as it is set, so only this service redials.
// Only direct links are kept: a relayed link is the relay's to end (its limits), and whoever
// needs one opens it again on demand.

import type { Identify } from '@libp2p/identify'
import type {
  ComponentLogger,
  Connection,
  IdentifyResult,
  Libp2pEvents,
  PeerId,
  PeerStore,
  PeerUpdate,
  Startable,
  StreamCloseEvent,
  TypedEventTarget,
} from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import type { Logger } from '../logger.ts'

/** Peer store tag of a peer that spoke a Substrate protocol with us. */
export const MESH_PEER_TAG = 'substrate-mesh'
/** kad-dht's mark for libp2p's reconnect queue (`KEEP_ALIVE` + `-kad-dht`). */
const KAD_KEEP_ALIVE_TAG = 'keep-alive-kad-dht'

export interface PeerKeeperInit {
  /** A peer that lists a protocol starting with this is a mesh peer. */
  protocolPrefix?: string
  /** Tag value (the pruner closes the lowest summed values first; kad-dht's closest are 50). */
  tagValue?: number
  /** First redial after a dropped link, before jitter (×0.5–1); doubles after each failure. */
  minDelayMs?: number
  /** The backoff stops doubling here. */
  maxDelayMs?: number
  /** First redial after the remote ended the link (closed it, or reset it as it closed or aborted). */
  remoteCloseDelayMs?: number
  /** Failed redials in a row before the peer is left alone (until it connects again). */
  maxAttempts?: number
  /** Each redial gives up after this long. */
  dialTimeoutMs?: number
  /** Close spare connections to a peer (default on), once they are this old (default 2 s). */
  dedupe?: boolean
  dedupeGraceMs?: number
  /** Our log (debug level): links dropped, redialled, given up, spares closed. */
  logger?: Logger
}

export interface LinkStats {
  /** Open connections, and how many distinct peers they reach. */
  connections: number
  peers: number
  /** Connections beyond one per peer. */
  duplicates: number
  inbound: number
  outbound: number
  /** Known mesh peers (tagged), connected or not. */
  meshPeers: number
  /** Mesh peers with a redial scheduled now. */
  redialing: number
  /** Since start: redials tried, those that connected, peers given up on. */
  redials: { attempts: number; succeeded: number; gaveUp: number }
  /** Connections opened and closed since start, and spare ones we closed. */
  opened: number
  closed: number
  sparesClosed: number
}

export interface PeerKeeper extends Startable {
  stats(): LinkStats
  /** Known mesh peers (peer id strings). */
  meshPeers(): string[]
}

interface Redial {
  peer: PeerId
  /** Failed attempts so far. */
  attempts: number
  /** The un-jittered delay of attempt 0; doubles per failure. */
  firstDelayMs: number
  timer: NodeJS.Timeout | undefined
  nextAt: number
  dialing: boolean
}

export interface PeerKeeperComponents {
  peerId: PeerId
  events: TypedEventTarget<Libp2pEvents>
  peerStore: PeerStore
  connectionManager: ConnectionManager
  logger: ComponentLogger
  /** libp2p's identify service (a service is also a component under its key). */
  identify?: Identify
}

/** Protocols whose streams may be cut with a spare connection: short requests, or gossipsub (moved). */
const MOVABLE = [
  '/ipfs/id/',
  '/ipfs/ping/',
  '/meshsub/',
  '/floodsub/',
  '/kad/',
  '/libp2p/autonat/',
  '/libp2p/dcutr',
]
const movable = (protocol: string | undefined) =>
  protocol !== undefined && MOVABLE.some((m) => protocol.includes(m))

/** Who ended a connection: we closed it, we aborted it (a failure seen here), or neither. */
type CloseOrigin = 'us' | 'abort' | 'remote'
/** Socket errors that mean the remote end closed or reset the connection. */
const REMOTE_ENDED = new Set(['ECONNRESET', 'EPIPE'])
const errorCode = (err: unknown) => String((err as { code?: unknown } | undefined)?.code ?? '')

/** A direct connection (not through a relay), the only kind spares are looked for among. */
const isDirect = (c: Connection) => c.direct && c.limits === undefined

/** The connection of a pair both ends keep: dialled by the smaller peer id, else the oldest. */
export function connectionToKeep(self: string, conns: Connection[]): Connection | undefined {
  const dialler = (c: Connection) => (c.direction === 'outbound' ? self : c.remotePeer.toString())
  return [...conns].sort((x, y) => {
    const dx = dialler(x)
    const dy = dialler(y)
    if (dx !== dy) return dx < dy ? -1 : 1
    return x.timeline.open - y.timeline.open
  })[0]
}

export function peerKeeper(init: PeerKeeperInit = {}) {
  return (components: PeerKeeperComponents): PeerKeeper => {
    const log = components.logger.forComponent('substrate:peer-keeper')
    const prefix = init.protocolPrefix ?? '/substrate/'
    const tagValue = init.tagValue ?? 100
    const minDelayMs = init.minDelayMs ?? 1_000
    const maxDelayMs = init.maxDelayMs ?? 60_000
    const remoteCloseDelayMs = init.remoteCloseDelayMs ?? 10_000
    const maxAttempts = init.maxAttempts ?? 20
    const dialTimeoutMs = init.dialTimeoutMs ?? 10_000
    const self = components.peerId.toString()

    const mesh = new Set<string>()
    const redials = new Map<string, Redial>()
    const counts = { attempts: 0, succeeded: 0, gaveUp: 0, opened: 0, closed: 0, sparesClosed: 0 }
    const dedupe = init.dedupe ?? true
    const dedupeGraceMs = init.dedupeGraceMs ?? 2_000
    /** Peers with a spare-connection check scheduled. */
    const spareChecks = new Map<string, NodeJS.Timeout>()
    let started = false
    let lastPullIn = 0

    const openTo = (peer: PeerId) =>
      components.connectionManager.getConnections(peer).filter((c) => c.status === 'open')

    const tag = (peer: PeerId) => {
      const id = peer.toString()
      if (mesh.has(id)) return
      mesh.add(id)
      components.peerStore
        .merge(peer, { tags: { [MESH_PEER_TAG]: { value: tagValue } } })
        .catch((err: unknown) => log('could not tag %p: %s', peer, String(err)))
    }

    const cancel = (id: string) => {
      const r = redials.get(id)
      if (r === undefined) return
      clearTimeout(r.timer)
      redials.delete(id)
    }

    const arm = (r: Redial, delayMs: number) => {
      clearTimeout(r.timer)
      r.nextAt = Date.now() + delayMs
      r.timer = setTimeout(() => void attempt(r), delayMs)
      r.timer.unref()
    }

    /** The next wait: the doubled delay, capped, jittered to 50–100 % of it. */
    const backoff = (r: Redial) => {
      const base = Math.min(maxDelayMs, r.firstDelayMs * 2 ** r.attempts)
      return base / 2 + (Math.random() * base) / 2
    }

    const attempt = async (r: Redial) => {
      const id = r.peer.toString()
      if (!started || redials.get(id) !== r) return
      if (openTo(r.peer).length > 0) {
        cancel(id)
        return
      }
      r.dialing = true
      counts.attempts++
      try {
        await components.connectionManager.openConnection(r.peer, {
          signal: AbortSignal.timeout(dialTimeoutMs),
        })
        if (redials.get(id) !== r) return
        counts.succeeded++
        cancel(id)
        init.logger?.debug('peer redialled', { peer: id, failedBefore: r.attempts })
        pullIn()
      } catch (err) {
        if (!started || redials.get(id) !== r) return
        r.attempts++
        if (r.attempts >= maxAttempts) {
          counts.gaveUp++
          cancel(id)
          init.logger?.debug('peer redial given up', { peer: id, attempts: r.attempts, error: String(err) })
          return
        }
        arm(r, backoff(r))
      } finally {
        r.dialing = false
      }
    }

    /** A link came back: the network may have healed, so try the others soon (once per 10 base delays). */
    const pullIn = () => {
      const now = Date.now()
      if (now - lastPullIn < minDelayMs * 10) return
      lastPullIn = now
      for (const r of redials.values()) {
        if (r.dialing || r.nextAt - now <= minDelayMs * 2) continue
        arm(r, minDelayMs / 2 + Math.random() * minDelayMs)
      }
    }

    const onConnectionClose = (conn: Connection, by: CloseOrigin, error: unknown) => {
      counts.closed++
      // Relayed links are the relay's to end (its limits) and opened again on demand by whoever
      // needs one; redialling or re-identifying on their closes fed a loop of relayed dials and
      // DCUtR attempts that cut a job stream as it opened (mesh-netns test, 1 run in 3).
      if (!conn.direct) return
      const id = conn.remotePeer.toString()
      if (!started || !mesh.has(id) || redials.has(id)) return
      const left = openTo(conn.remotePeer).filter((c) => c.id !== conn.id)
      if (left.length > 0) {
        // A spare went (ours or the remote's doing): streams that lived on it move.
        reidentify(left)
        return
      }
      // Closed on purpose by us (hang-up, pruning), even if the close then timed out: leave it.
      if (by === 'us') return
      // Failed here (our abort, or the network: timed out, unreachable): redial soon. Ended by
      // the remote (a clean close, or a reset/broken pipe as it closed or aborted): it stopped,
      // hung up on us, or lost the link and redials itself soon; wait longer.
      const failedHere = by === 'abort' || (error !== undefined && !REMOTE_ENDED.has(errorCode(error)))
      const firstDelayMs = failedHere ? minDelayMs * (self < id ? 1 : 3) : remoteCloseDelayMs
      const r: Redial = {
        peer: conn.remotePeer,
        attempts: 0,
        firstDelayMs,
        timer: undefined,
        nextAt: 0,
        dialing: false,
      }
      redials.set(id, r)
      arm(r, backoff(r))
      init.logger?.debug('peer link dropped', {
        peer: id,
        by,
        ...(error === undefined ? {} : { error: String(error) }),
      })
    }

    const onOpen = (evt: CustomEvent<Connection>) => {
      const conn = evt.detail
      counts.opened++
      // A close event does not say which end began it (`local` is set only for some aborts), so
      // ours are noted here: close() is a decision (hang-up, pruning, a spare, stop); abort()
      // without one is a failure seen here (the connection monitor's failed ping).
      let by: CloseOrigin = 'remote'
      const close = conn.close.bind(conn)
      conn.close = (options) => {
        by = 'us'
        return close(options)
      }
      const abort = conn.abort.bind(conn)
      conn.abort = (err) => {
        if (by === 'remote') by = 'abort'
        abort(err)
      }
      conn.addEventListener('close', (e: StreamCloseEvent) => onConnectionClose(conn, by, e.error), {
        once: true,
      })
      const r = conn.direct ? redials.get(conn.remotePeer.toString()) : undefined
      if (r !== undefined && !r.dialing) {
        // It is back without our redial (it dialled us, or another dial reached it).
        cancel(conn.remotePeer.toString())
        pullIn()
      }
    }

    /** Re-runs identify on the connection kept, so topologies (gossipsub) open their streams there. */
    const reidentify = (left: Connection[]) => {
      const keep = connectionToKeep(self, left.filter(isDirect)) ?? left[0]!
      const t = setTimeout(() => {
        if (!started || keep.status !== 'open') return
        components.identify
          ?.identify(keep, { signal: AbortSignal.timeout(dialTimeoutMs) })
          .catch((err: unknown) => log('identify again on %p failed: %s', keep.remotePeer, String(err)))
      }, 100)
      t.unref()
    }

    /** Closes the spare direct connections to `peer` that we dialled, once idle. */
    const closeSpares = (peer: PeerId) => {
      const id = peer.toString()
      spareChecks.delete(id)
      if (!started) return
      const direct = openTo(peer).filter(isDirect)
      if (direct.length < 2) return
      const keep = connectionToKeep(self, direct)!
      let waiting = false
      for (const c of direct) {
        if (c === keep || c.direction !== 'outbound') continue
        if (Date.now() - c.timeline.open < dedupeGraceMs) {
          waiting = true
          continue
        }
        const busy = c.streams.some((st) => !movable(st.protocol))
        if (busy) {
          waiting = true
          continue
        }
        counts.sparesClosed++
        init.logger?.debug('spare connection closed', { peer: id, addr: c.remoteAddr.toString() })
        c.close().catch((err: unknown) => c.abort(err instanceof Error ? err : new Error(String(err))))
      }
      if (waiting) scheduleSpareCheck(peer, dedupeGraceMs)
    }

    const scheduleSpareCheck = (peer: PeerId, delayMs: number) => {
      const id = peer.toString()
      if (!dedupe || spareChecks.has(id)) return
      const t = setTimeout(() => closeSpares(peer), delayMs)
      t.unref()
      spareChecks.set(id, t)
    }

    const onIdentify = (evt: CustomEvent<IdentifyResult>) => {
      if (evt.detail.protocols.some((p) => p.startsWith(prefix))) tag(evt.detail.peerId)
      if (openTo(evt.detail.peerId).filter(isDirect).length > 1)
        scheduleSpareCheck(evt.detail.peerId, dedupeGraceMs)
    }

    const onPeerUpdate = (evt: CustomEvent<PeerUpdate>) => {
      const { peer } = evt.detail
      if (!peer.tags.has(KAD_KEEP_ALIVE_TAG)) return
      components.peerStore
        .merge(peer.id, { tags: { [KAD_KEEP_ALIVE_TAG]: undefined } })
        .catch((err: unknown) => log('could not untag %p: %s', peer.id, String(err)))
    }

    return {
      stats() {
        const conns = components.connectionManager.getConnections().filter((c) => c.status === 'open')
        const peers = new Set(conns.map((c) => c.remotePeer.toString())).size
        return {
          connections: conns.length,
          peers,
          duplicates: conns.length - peers,
          inbound: conns.filter((c) => c.direction === 'inbound').length,
          outbound: conns.filter((c) => c.direction === 'outbound').length,
          meshPeers: mesh.size,
          redialing: redials.size,
          redials: { attempts: counts.attempts, succeeded: counts.succeeded, gaveUp: counts.gaveUp },
          opened: counts.opened,
          closed: counts.closed,
          sparesClosed: counts.sparesClosed,
        }
      },
      meshPeers: () => [...mesh],
      async start() {
        started = true
        components.events.addEventListener('connection:open', onOpen)
        components.events.addEventListener('peer:identify', onIdentify)
        components.events.addEventListener('peer:update', onPeerUpdate)
        // Mesh peers remembered from earlier runs (the peer store may be on disk).
        const known = await components.peerStore.all({
          filters: [(p) => p.tags.has(MESH_PEER_TAG) && !p.id.equals(components.peerId)],
        })
        for (const p of known) mesh.add(p.id.toString())
      },
      beforeStop() {
        // Before libp2p closes its connections: those closes are not losses to repair.
        started = false
        for (const id of [...redials.keys()]) cancel(id)
        for (const t of spareChecks.values()) clearTimeout(t)
        spareChecks.clear()
      },
      stop() {
        started = false
        components.events.removeEventListener('connection:open', onOpen)
        components.events.removeEventListener('peer:identify', onIdentify)
        components.events.removeEventListener('peer:update', onPeerUpdate)
        for (const id of [...redials.keys()]) cancel(id)
      },
    }
  }
}
