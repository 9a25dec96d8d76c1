// What this node, as a requester, has learned about each worker from its own jobs: how many
// of our jobs it is running right now (so we never send it more than it advertised room
// for), and a penalty for refusing, stalling, failing or vanishing that fades with time and
// shrinks with each success. The scheduler (pick-worker.ts) ranks peers in bad standing
// after every peer in good standing, so one timeout costs that peer the next jobs, not the
// user another timeout; after a while (or a success) it competes normally again.
//
// Local knowledge only: nothing here is gossiped or signed. Reputation other peers can
// check comes with the ledger's receipts.

/** How a job on a worker ended, as the requester saw it. */
export type WorkerOutcome = 'success' | 'busy' | 'refused' | 'timeout' | 'gone' | 'failed'

/**
 * Penalty points per outcome. At BAD_STANDING or more a peer ranks after the rest; with the
 * default half-life of a minute a refusal keeps it there ~1 min, a stall ~3 min, busy ~15 s.
 */
const PENALTY: Record<Exclude<WorkerOutcome, 'success'>, number> = {
  // Full is not misbehaviour, but asking again at once would only be refused again.
  busy: 0.6,
  // Refused a job its record said it could run (model gone, no sandbox).
  refused: 1,
  // Accepted and then said nothing: the costliest for the user, who waited the timeout.
  timeout: 4,
  // The connection or process died.
  gone: 2,
  // Broke the protocol, sent a bad receipt or failed the job.
  failed: 4,
}

export const BAD_STANDING = 0.5

export interface WorkerStandingInit {
  /** Most of our jobs one peer runs at once, whatever it advertises. */
  maxInFlightPerPeer?: number
  /** A penalty halves in this time. */
  penaltyHalfLifeMs?: number
  now?: () => number
}

export interface PeerStanding {
  peer: string
  inFlight: number
  penalty: number
  successes: number
  failures: number
  lastOutcome?: WorkerOutcome
}

export interface WorkerStanding {
  readonly maxInFlightPerPeer: number
  /** Counts a job started on `peer` until the returned function is called. */
  begin(peer: string): () => void
  /** Our jobs running on `peer`; with `since`, only those started at or after it (local ms). */
  inFlight(peer: string, since?: number): number
  record(peer: string, outcome: WorkerOutcome): void
  /** The current (decayed) penalty; 0 for a peer with a clean record. */
  penalty(peer: string): number
  standing(peer: string): PeerStanding
  /** Resolves when one of our jobs ends (a slot may have freed), or after `ms`. */
  released(ms: number, signal?: AbortSignal): Promise<void>
}

interface Entry {
  starts: number[]
  penalty: number
  at: number
  successes: number
  failures: number
  lastOutcome?: WorkerOutcome
}

export function createWorkerStanding(init: WorkerStandingInit = {}): WorkerStanding {
  const now = init.now ?? Date.now
  const maxInFlightPerPeer = init.maxInFlightPerPeer ?? 4
  const halfLifeMs = init.penaltyHalfLifeMs ?? 60_000
  const peers = new Map<string, Entry>()
  const waiters = new Set<() => void>()

  const entry = (peer: string): Entry => {
    let e = peers.get(peer)
    if (e === undefined) {
      e = { starts: [], penalty: 0, at: now(), successes: 0, failures: 0 }
      peers.set(peer, e)
    }
    return e
  }
  const decayed = (e: Entry, t: number) => e.penalty * 0.5 ** ((t - e.at) / halfLifeMs)
  // Bounded: a peer with nothing in flight and a negligible penalty is forgotten.
  const prune = () => {
    if (peers.size < 1024) return
    const t = now()
    for (const [peer, e] of peers) if (e.starts.length === 0 && decayed(e, t) < 0.01) peers.delete(peer)
  }

  return {
    maxInFlightPerPeer,
    begin(peer) {
      prune()
      const e = entry(peer)
      const started = now()
      e.starts.push(started)
      let done = false
      return () => {
        if (done) return
        done = true
        const i = e.starts.indexOf(started)
        if (i >= 0) e.starts.splice(i, 1)
        for (const wake of waiters) wake()
      }
    },
    inFlight(peer, since) {
      const starts = peers.get(peer)?.starts ?? []
      return since === undefined ? starts.length : starts.filter((s) => s >= since).length
    },
    record(peer, outcome) {
      const e = entry(peer)
      const t = now()
      const current = decayed(e, t)
      e.at = t
      e.lastOutcome = outcome
      if (outcome === 'success') {
        e.successes++
        // A job served puts the peer back in good standing; what is left of the penalty still
        // orders it after cleaner peers and counts if it fails again soon.
        e.penalty = Math.min(current / 4, BAD_STANDING / 2)
      } else {
        e.failures++
        e.penalty = current + PENALTY[outcome]
      }
    },
    penalty(peer) {
      const e = peers.get(peer)
      return e === undefined ? 0 : decayed(e, now())
    },
    standing(peer) {
      const e = peers.get(peer)
      if (e === undefined) return { peer, inFlight: 0, penalty: 0, successes: 0, failures: 0 }
      return {
        peer,
        inFlight: e.starts.length,
        penalty: decayed(e, now()),
        successes: e.successes,
        failures: e.failures,
        ...(e.lastOutcome === undefined ? {} : { lastOutcome: e.lastOutcome }),
      }
    },
    released(ms, signal) {
      return new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          waiters.delete(done)
          signal?.removeEventListener('abort', done)
          resolve()
        }
        const timer = setTimeout(done, ms)
        waiters.add(done)
        signal?.addEventListener('abort', done, { once: true })
      })
    },
  }
}

/** How an error from a worker counts against it; undefined when it says nothing about the worker. */
export function outcomeOf(code: string): WorkerOutcome | undefined {
  switch (code) {
    case 'E_WORKER_BUSY':
      return 'busy'
    case 'E_MODEL_NOT_FOUND':
    case 'E_SANDBOX_UNAVAILABLE':
      return 'refused'
    case 'E_PEER_TIMEOUT':
      return 'timeout'
    case 'E_PEER_GONE':
    case 'E_CANCELLED':
      return 'gone'
    case 'E_PROTOCOL':
    case 'E_RECEIPT_INVALID':
    case 'E_RECORD_TOO_LARGE':
    case 'E_INTERNAL':
      return 'failed'
    default:
      return undefined
  }
}
