// Which peers to ask for a job, best first (DESIGN.md, "Dispatch"): only peers whose last
// capacity record says they hold the model and have a free slot; among them, the model
// already loaded beats a load, then the nearer peer, then the faster one. Reputation joins
// the order when the ledger exists.

import type { CapacityEntry } from './capacity-gossip.ts'

export interface PickOptions {
  /** Peers not to ask again (they refused or failed this request). */
  exclude?: ReadonlySet<string>
  /** Round-trip time to a peer in ms, when known (e.g. from ping); unknown sorts last. */
  latencyMs?: (peer: string) => number | undefined
}

export function pickWorkers(
  view: readonly CapacityEntry[],
  digest: string,
  options: PickOptions = {},
): string[] {
  const latency = (peer: string) => options.latencyMs?.(peer) ?? Number.POSITIVE_INFINITY
  return view
    .filter(
      (e) =>
        options.exclude?.has(e.peer) !== true &&
        e.record.freeSlots > 0 &&
        e.record.models.some((m) => m.digest === digest),
    )
    .map((e) => ({ e, loaded: e.record.loaded.includes(digest), rtt: latency(e.peer) }))
    .sort(
      (a, b) =>
        Number(b.loaded) - Number(a.loaded) ||
        a.e.record.queueDepth - b.e.record.queueDepth ||
        (a.rtt === b.rtt ? 0 : a.rtt < b.rtt ? -1 : 1) ||
        b.e.record.tokensPerSecond - a.e.record.tokensPerSecond,
    )
    .map(({ e }) => e.peer)
}
