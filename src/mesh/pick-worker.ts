// Which peers to ask for a job, best first (DESIGN.md, "Dispatch"): only peers whose last
// capacity record says they hold the model and have a free slot, less the jobs we sent them
// since that record (they are not in it yet), and never more of ours at once than a per-peer
// cap. Peers in bad standing (they recently refused, stalled, failed or vanished on us; see
// worker-standing.ts) come after every peer in good standing. Then: the model already loaded
// beats a load, a shorter queue, the nearer peer, the faster one, the cleaner record.

import type { CapacityEntry } from './capacity-gossip.ts'
import { BAD_STANDING } from './worker-standing.ts'

export interface PickOptions {
  /** Peers not to ask again (they refused or failed this request). */
  exclude?: ReadonlySet<string>
  /** Round-trip time to a peer in ms, when known (e.g. from ping); unknown sorts last. */
  latencyMs?: (peer: string) => number | undefined
  /** Our jobs running on `peer` that were started at or after `since` (local ms); all with no `since`. */
  inFlight?: (peer: string, since?: number) => number
  /** Most of our jobs one peer may run at once. */
  maxInFlightPerPeer?: number
  /** The peer's current penalty (0 = clean); at BAD_STANDING or more it ranks after the rest. */
  penalty?: (peer: string) => number
  /** Rank peers that are full (no free slot, or at our cap) too, e.g. to know whether waiting helps. */
  includeFull?: boolean
}

/** Free slots a peer has for us: its advertised ones less our jobs it took since it said so. */
export function freeSlotsFor(entry: CapacityEntry, options: PickOptions = {}): number {
  const sinceRecord = options.inFlight?.(entry.peer, entry.lastSeen) ?? 0
  const ours = options.inFlight?.(entry.peer) ?? 0
  const cap = (options.maxInFlightPerPeer ?? Number.POSITIVE_INFINITY) - ours
  return Math.min(entry.record.freeSlots - sinceRecord, cap)
}

export function pickWorkers(
  view: readonly CapacityEntry[],
  digest: string,
  options: PickOptions = {},
): string[] {
  const latency = (peer: string) => options.latencyMs?.(peer) ?? Number.POSITIVE_INFINITY
  const penalty = (peer: string) => options.penalty?.(peer) ?? 0
  return view
    .filter(
      (e) =>
        options.exclude?.has(e.peer) !== true &&
        (options.includeFull === true || freeSlotsFor(e, options) > 0) &&
        e.record.models.some((m) => m.digest === digest),
    )
    .map((e) => {
      const p = penalty(e.peer)
      return { e, bad: p >= BAD_STANDING, p, loaded: e.record.loaded.includes(digest), rtt: latency(e.peer) }
    })
    .sort(
      (a, b) =>
        Number(a.bad) - Number(b.bad) ||
        Number(b.loaded) - Number(a.loaded) ||
        a.e.record.queueDepth - b.e.record.queueDepth ||
        (a.rtt === b.rtt ? 0 : a.rtt < b.rtt ? -1 : 1) ||
        b.e.record.tokensPerSecond - a.e.record.tokensPerSecond ||
        a.p - b.p,
    )
    .map(({ e }) => e.peer)
}
