// Ledger sync (issue 5, "Sync"): puts the credits ledger on the network.
//
// `/substrate/ledger-sync/1` is a pull: the puller sends its version vector, the responder
// answers with what `diff` says the puller lacks (fork proofs first, then each author's
// missing ops in seq order) in bounded frames, then `end`. The cost is the difference plus
// one vector, never the ledger. Every frame is ingested in its own transaction as it
// arrives, so a cut stream keeps what arrived and the next pull starts from the new heads.
// The puller bounds a session by ops, bytes and time, and a peer that sends what no honest
// peer holds (a forged op, a broken chain, garbage) ends the session and is left alone for
// a while; benign refusals (a gap, an op from a clock ahead of ours, a frozen author's op)
// do not count against it.
//
// Heads gossip: every node announces a digest of its vector on `substrate/ledger-heads/1`
// soon after its ledger changes (≤ 100 ms, coalesced), and unchanged heads again only as a
// slow keep-alive (30–50 s after its last announcement, jittered). A connected peer whose digest
// differs from ours, and who holds at least as many ops, is pulled from; otherwise it will
// pull from us. At most one pull per peer at a time, a minimum gap between pulls from one
// peer, and a few pulls at once overall. A newly identified peer that speaks the protocol
// is pulled from at once.

import * as dagCbor from '@ipld/dag-cbor'
import type { Message, SubscriptionChangeData } from '@libp2p/gossipsub'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { Connection, IdentifyResult, PeerId, PeerUpdate, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { isErrorCode, SubstrateError, toSubstrateError } from '../errors.ts'
import type { Ledger } from '../ledger/ledger.ts'
import { isLedgerError, type LedgerError } from '../ledger/ledger-error.ts'
import type { LedgerOp } from '../ledger/ops.ts'
import { diff, headsFromJSON } from '../ledger/vector.ts'
import type { Logger } from '../logger.ts'
import { MiB } from '../protocol/limits.ts'
import { errorFrame, frameChannel } from './job-codec.ts'
import {
  type Announcement,
  decodeAnnouncement,
  encodeAnnouncement,
  type HeadsSummary,
  LEDGER_HEADS_TOPIC,
  LEDGER_SYNC_PROTOCOL,
  MAX_ANNOUNCE_OPS,
  MAX_ANNOUNCE_OPS_BYTES,
  MAX_FRAME_OPS,
  MAX_FRAME_PROOFS,
  MAX_OPS_FRAME_BYTES,
  MAX_PULL_FRAME_BYTES,
  MAX_RESPONDER_FRAME_BYTES,
  type PullFrame,
  pullFrame,
  pullFrameSchema,
  type ResponderFrame,
  responderFrameSchema,
  sameDigest,
  summarizeHeads,
} from './ledger-sync-codec.ts'
import type { MeshNode } from './libp2p-node.ts'

export { LEDGER_HEADS_TOPIC, LEDGER_SYNC_PROTOCOL } from './ledger-sync-codec.ts'

/**
 * Unchanged heads are re-announced 30–50 s after the last announcement. Not shorter: at rest
 * this is the topic's whole cost (a 5 s tick made it the largest in a resting mesh, ~1.9 KB/s
 * sent per node at 10 daemons), and it only matters when an announcement is lost between
 * peers that stay connected. Not longer: such a loss then lasts less than a minute, within
 * the capacity records' 60 s keep-alive, so the ledger is never staler than the capacity view.
 */
export const DEFAULT_HEADS_KEEP_ALIVE_MS = 40_000

export interface LedgerSyncComponents {
  mesh: Pick<MeshNode, 'libp2p' | 'peerId'>
  ledger: Ledger
  logger: Logger
}

export interface LedgerSyncInit {
  /**
   * Re-announce unchanged heads this long after our last announcement (±25%, jittered): the
   * anti-entropy backstop for an announcement lost between peers that stayed connected.
   * Every change is announced at once anyway, and a (re)connect or a new subscriber gets a
   * pull or an announcement of its own, so this can be slow. Default 40 s.
   */
  keepAliveMs?: number
  /** Shortest gap between two of our announcements. */
  minAnnounceGapMs?: number
  /** Shortest gap between two pulls from one peer. */
  minSyncGapMs?: number
  /** How long a peer whose pull failed is left alone; ten times this after a hostile one. */
  failureBackoffMs?: number
  /** Caps on one session (one stream); the responder stops at maxOps and says `more`. */
  maxOpsPerSession?: number
  maxBytesPerSession?: number
  sessionTimeoutMs?: number
  /** Longest wait for one frame, either side. */
  frameTimeoutMs?: number
  /** Most sessions one sync runs back to back (while the responder has more, or after a gap). */
  maxRounds?: number
  maxConcurrentPulls?: number
  /** Most pulls this node serves at once; beyond, E_LEDGER_SYNC_BUSY. */
  maxServing?: number
  /**
   * Accepted announcements of one origin: one per this many ms on average, in bursts of at
   * most `announcementBurst` (a loaded machine delivers honest ones in clumps).
   */
  minAnnouncementGapMs?: number
  announcementBurst?: number
  /**
   * How long a pull that an announcement asks for waits first (plus up to as much again at
   * random): the eager push of the same ops usually lands meanwhile, and then no pull runs.
   */
  pullGraceMs?: number
  /**
   * After ops arrived by eager push or by a pull, our own announcement waits this long (plus
   * up to as much again at random): the flood or the peer's announcement already told the
   * mesh, so 20 nodes re-announcing at once would only load it; it is still made, for peers
   * that missed it. A new subscriber's announcement waits this long too (coalesced).
   */
  relayAnnounceDelayMs?: number
  /** Pull from every peer that connects and speaks the protocol. */
  syncOnConnect?: boolean
}

export interface SyncResult {
  peer: string
  sessions: number
  /** Ops and fork proofs that joined our ledger. */
  added: number
  forks: number
  duplicates: number
  /** Benign refusals: ops ahead of a gap, from the future, of frozen authors. */
  refused: number
  /** Ops received (a fork proof counts two). */
  opsIn: number
  /** Frame bytes both ways, length prefixes included. */
  bytesIn: number
  bytesOut: number
  /** The last session stopped at a cap and the peer holds more. */
  more: boolean
}

export interface LedgerSyncStats {
  pulls: number
  pullFailures: number
  served: number
  servedOps: number
  busyRefusals: number
  announced: number
  announcementsAccepted: number
  announcementsRejected: number
  announcementsDropped: number
  /** Ops that arrived with a peer's announcement (eager push) and joined our ledger. */
  pushedOpsAdded: number
  bytesIn: number
  bytesOut: number
}

export interface LedgerSync {
  start(): Promise<void>
  stop(): Promise<void>
  /**
   * Pulls from a connected peer until caught up (at most maxRounds sessions). Joins a pull
   * already running with that peer. Rejects with a SubstrateError; what arrived stays.
   */
  syncWith(peer: string): Promise<SyncResult>
  /** Queues a pull from `peer`, rate-limited. */
  requestSync(peer: string): void
  /** Announces our heads soon. */
  announce(): void
  /** Our heads summary as announced. */
  summary(): HeadsSummary
  stats(): LedgerSyncStats
  /** Called after every pull, failed ones with the error. */
  onSync(listener: (result: SyncResult, error?: SubstrateError) => void): () => void
}

interface PeerState {
  timer: NodeJS.Timeout | undefined
  queued: boolean
  again: boolean
  /** The pull after this one was asked for by announcements only. */
  againIfBehind: boolean
  notBefore: number
  /** Until when the peer is left alone for having been hostile (a reconnect does not lift it). */
  hostileUntil: number
  /** The announced digest we last pulled everything for: no need to pull for it again. */
  pulledFor: Uint8Array | undefined
  /** Pull only if the peer still announces heads we lack (the queued pull came from its announcement). */
  onlyIfBehind: boolean
}

const BENIGN = new Set(['gap', 'future', 'frozen'])

/** Whether an op names `author` as its signer (ingest then checks the signature). */
function sameAuthor(bytes: Uint8Array, author: string): boolean {
  try {
    return (dagCbor.decode(bytes) as { signer?: unknown }).signer === author
  } catch {
    return false
  }
}

export function createLedgerSync(components: LedgerSyncComponents, init: LedgerSyncInit = {}): LedgerSync {
  const { ledger } = components
  const libp2p = components.mesh.libp2p
  const self = components.mesh.peerId
  const log = components.logger.child('ledger-sync')
  const keepAliveMs = init.keepAliveMs ?? DEFAULT_HEADS_KEEP_ALIVE_MS
  const minAnnounceGapMs = init.minAnnounceGapMs ?? 100
  const minSyncGapMs = init.minSyncGapMs ?? 100
  const failureBackoffMs = init.failureBackoffMs ?? 3_000
  const maxOpsPerSession = init.maxOpsPerSession ?? 20_000
  const maxBytesPerSession = init.maxBytesPerSession ?? 64 * MiB
  const sessionTimeoutMs = init.sessionTimeoutMs ?? 60_000
  const frameTimeoutMs = init.frameTimeoutMs ?? 15_000
  const maxRounds = init.maxRounds ?? 8
  const maxConcurrentPulls = init.maxConcurrentPulls ?? 4
  const maxServing = init.maxServing ?? 8
  const minAnnouncementGapMs = init.minAnnouncementGapMs ?? 20
  const announcementBurst = init.announcementBurst ?? 8
  const pullGraceMs = init.pullGraceMs ?? 150
  const relayAnnounceDelayMs = init.relayAnnounceDelayMs ?? 250
  const syncOnConnect = init.syncOnConnect ?? true

  const stats: LedgerSyncStats = {
    pulls: 0,
    pullFailures: 0,
    served: 0,
    servedOps: 0,
    busyRefusals: 0,
    announced: 0,
    announcementsAccepted: 0,
    announcementsRejected: 0,
    announcementsDropped: 0,
    pushedOpsAdded: 0,
    bytesIn: 0,
    bytesOut: 0,
  }
  const listeners = new Set<(result: SyncResult, error?: SubstrateError) => void>()
  const inflight = new Map<string, Promise<SyncResult>>()
  const peers = new Map<string, PeerState>()
  const announced = new Map<string, { summary: HeadsSummary; at: number }>()
  const queue: string[] = []
  let activePulls = 0
  let serving = 0
  let running = false
  let stopping = new AbortController()
  let cached: HeadsSummary | undefined
  let keepAlive: NodeJS.Timeout | undefined
  let pendingAnnounce: NodeJS.Timeout | undefined
  let pendingAnnounceAt = 0
  let lastAnnounce = 0
  let offChange: (() => void) | undefined
  // Our own ops since the last announcement, sent along with it while few and small.
  let ownOps: Uint8Array[] = []
  let ownOpsBytes = 0
  let ownOpsOverflow = false
  // What is adding ops right now (for the debug line that says where each change came from).
  let cause: 'local' | 'push' | 'pull' = 'local'
  let changeCause: 'local' | 'push' | 'pull' | undefined
  let headsLog: NodeJS.Immediate | undefined
  /** Runs an ingest with `cause` set for the change lines it triggers. */
  const ingestingAs = <T>(by: 'push' | 'pull', ingest: () => T): T => {
    cause = by
    try {
      return ingest()
    } finally {
      cause = 'local'
    }
  }

  const summary = (): HeadsSummary => {
    cached ??= summarizeHeads(ledger.log.heads())
    return cached
  }

  // ---- the puller ----------------------------------------------------------------------

  async function session(peer: PeerId, result: SyncResult): Promise<{ more: boolean; gaps: number }> {
    const deadline = AbortSignal.timeout(sessionTimeoutMs)
    const signal = AbortSignal.any([deadline, stopping.signal])
    let raw: Stream
    try {
      raw = await libp2p.dialProtocol(peer, LEDGER_SYNC_PROTOCOL, { signal })
    } catch (cause) {
      throw new SubstrateError(
        'E_PEER_GONE',
        `cannot open a ledger sync stream to ${peer}: ${String(cause)}`,
        {
          cause,
        },
      )
    }
    const ch = frameChannel<ResponderFrame, PullFrame>(raw, responderFrameSchema, MAX_RESPONDER_FRAME_BYTES, {
      label: 'ledger sync',
    })
    result.sessions++
    let opsIn = 0
    let gaps = 0
    const account = () => {
      result.bytesIn += ch.bytesRead - accounted.in
      result.bytesOut += ch.bytesWritten - accounted.out
      stats.bytesIn += ch.bytesRead - accounted.in
      stats.bytesOut += ch.bytesWritten - accounted.out
      accounted.in = ch.bytesRead
      accounted.out = ch.bytesWritten
    }
    const accounted = { in: 0, out: 0 }
    const limit = (what: string) =>
      new SubstrateError('E_LEDGER_SYNC_LIMIT', `ledger sync with ${peer}: ${what}; the rest comes next time`)
    const hostile = (error: LedgerError) =>
      new SubstrateError(
        'E_LEDGER_SYNC_BAD_PEER',
        `ledger sync peer ${peer} sent an op no honest peer holds: ${error.message}`,
        {
          cause: error,
        },
      )
    try {
      await ch.write(pullFrame(ledger.log.heads(), maxOpsPerSession), frameTimeoutMs)
      for (;;) {
        let frame: ResponderFrame
        try {
          frame = await ch.read({ timeoutMs: frameTimeoutMs, signal })
        } catch (err) {
          if (deadline.aborted) throw limit(`the session ran past ${sessionTimeoutMs} ms`)
          throw err
        } finally {
          account()
        }
        if (result.bytesIn > maxBytesPerSession) throw limit(`more than ${maxBytesPerSession} bytes`)
        if (frame.t === 'end') {
          await ch.close(frameTimeoutMs)
          account()
          return { more: frame.more, gaps }
        }
        if (frame.t === 'error') {
          const code = isErrorCode(frame.code) ? frame.code : 'E_PROTOCOL'
          throw new SubstrateError(code, `ledger sync peer ${peer}: ${frame.message}`)
        }
        opsIn += frame.t === 'ops' ? frame.ops.length : 2 * frame.proofs.length
        result.opsIn += frame.t === 'ops' ? frame.ops.length : 2 * frame.proofs.length
        if (opsIn > maxOpsPerSession) throw limit(`more than ${maxOpsPerSession} ops`)
        if (frame.t === 'forks') {
          for (const proof of frame.proofs) {
            try {
              if (ingestingAs('pull', () => ledger.log.ingestForkProof(proof))) {
                result.forks++
                result.added++
              } else result.duplicates++
            } catch (err) {
              if (!isLedgerError(err)) throw err
              if (!BENIGN.has(err.reason)) throw hostile(err)
              result.refused++
            }
          }
          continue
        }
        const ingested = ingestingAs('pull', () => ledger.log.ingestMany(frame.ops))
        result.added += ingested.added
        result.forks += ingested.forks
        result.duplicates += ingested.duplicates
        for (const { error } of ingested.refused) {
          // Valid ops of the same frame are kept: only the session ends.
          if (!BENIGN.has(error.reason)) throw hostile(error)
          if (error.reason === 'gap') gaps++
          result.refused++
        }
      }
    } catch (err) {
      const error = toSubstrateError(err)
      ch.reset(error.code)
      throw error
    }
  }

  async function pull(peer: string): Promise<SyncResult> {
    let id: PeerId
    try {
      id = peerIdFromString(peer)
    } catch (cause) {
      throw new SubstrateError('E_INVALID_ARGUMENT', `not a peer id: ${peer.slice(0, 64)}`, { cause })
    }
    const result: SyncResult = {
      peer,
      sessions: 0,
      added: 0,
      forks: 0,
      duplicates: 0,
      refused: 0,
      opsIn: 0,
      bytesIn: 0,
      bytesOut: 0,
      more: false,
    }
    stats.pulls++
    const startedAt = Date.now()
    try {
      for (let round = 0; round < maxRounds; round++) {
        const before = result.added
        const { more, gaps } = await session(id, result)
        result.more = more
        // Another round while the peer has more, or to fill a gap from the new heads, but
        // only while rounds make progress: a peer cannot keep us pulling for nothing.
        if ((!more && gaps === 0) || result.added === before) break
      }
    } catch (err) {
      const error = toSubstrateError(err)
      stats.pullFailures++
      for (const listener of listeners) listener(result, error)
      throw error
    }
    for (const listener of listeners) listener(result)
    if (result.added > 0) {
      log.debug('ledger ops pulled', {
        peer,
        added: result.added,
        sessions: result.sessions,
        ms: Date.now() - startedAt,
      })
    }
    return result
  }

  function syncWith(peer: string): Promise<SyncResult> {
    const running = inflight.get(peer)
    if (running !== undefined) return running
    const promise = pull(peer).finally(() => inflight.delete(peer))
    inflight.set(peer, promise)
    return promise
  }

  // ---- scheduling ----------------------------------------------------------------------

  const stateOf = (peer: string): PeerState => {
    let state = peers.get(peer)
    if (state === undefined) {
      state = {
        timer: undefined,
        queued: false,
        again: false,
        againIfBehind: false,
        notBefore: 0,
        hostileUntil: 0,
        pulledFor: undefined,
        onlyIfBehind: false,
      }
      peers.set(peer, state)
    }
    return state
  }

  function requestSync(peer: string, announced?: { graceMs: number }): void {
    if (!running || peer === self) return
    const state = stateOf(peer)
    // A pull for any other reason (a connect, the API) runs whatever the peer announces.
    if (announced === undefined) state.onlyIfBehind = false
    else if (!inflight.has(peer) && !state.queued && state.timer === undefined) state.onlyIfBehind = true
    // Queued: that pull will run from the latest heads anyway.
    if (state.queued) return
    if (inflight.has(peer)) {
      // Another pull after this one; only if still behind then, when only announcements asked.
      state.againIfBehind = state.again
        ? state.againIfBehind && announced !== undefined
        : announced !== undefined
      state.again = true
      return
    }
    if (state.timer !== undefined) return
    const grace = announced === undefined ? 0 : announced.graceMs * (1 + Math.random())
    state.timer = setTimeout(
      () => {
        state.timer = undefined
        state.queued = true
        queue.push(peer)
        pump()
      },
      Math.max(0, state.notBefore - Date.now(), grace),
    )
  }

  /** The peer announced heads we lack, and we have not pulled for that announcement yet. */
  function behind(peer: string): boolean {
    const theirs = announced.get(peer)?.summary
    if (theirs === undefined) return false
    const ours = summary()
    if (sameDigest(theirs.digest, ours.digest) || theirs.total < ours.total) return false
    const pulledFor = peers.get(peer)?.pulledFor
    return pulledFor === undefined || !sameDigest(pulledFor, theirs.digest)
  }

  function pump(): void {
    while (running && activePulls < maxConcurrentPulls && queue.length > 0) {
      const peer = queue.shift() as string
      const state = stateOf(peer)
      state.queued = false
      if (libp2p.getConnections(peerIdFromString(peer)).length === 0) continue
      // Asked for by an announcement: skip it if what was announced arrived meanwhile (by
      // eager push, or by a pull from another peer).
      if (state.onlyIfBehind && !behind(peer)) {
        state.onlyIfBehind = false
        continue
      }
      state.onlyIfBehind = false
      activePulls++
      const digest = announced.get(peer)?.summary.digest
      syncWith(peer)
        .then((result) => {
          state.notBefore = Date.now() + minSyncGapMs
          if (!result.more) state.pulledFor = digest
          if (result.more) {
            state.again = true
            state.againIfBehind = false
          }
        })
        .catch((err: unknown) => {
          const error = toSubstrateError(err)
          const hostile = error.code === 'E_LEDGER_SYNC_BAD_PEER' || error.code === 'E_PROTOCOL'
          state.notBefore = Date.now() + (hostile ? 10 * failureBackoffMs : failureBackoffMs)
          if (hostile) state.hostileUntil = state.notBefore
          log.debug('ledger pull failed', { peer, code: error.code, error: error.message })
          // Once the backoff is over, again if the peer still announces heads we lack: its next
          // announcement may be a keep-alive away, and nothing else would ask.
          if (!hostile && !state.again) {
            state.again = true
            state.againIfBehind = true
          }
        })
        .finally(() => {
          activePulls--
          if (state.again) {
            state.again = false
            requestSync(peer, state.againIfBehind ? { graceMs: 0 } : undefined)
          }
          pump()
        })
    }
  }

  /** Pull from `peer` when its announced heads differ from ours and it may hold more. */
  function consider(peer: string): void {
    if (!behind(peer)) return
    if (libp2p.getConnections(peerIdFromString(peer)).length === 0) return
    requestSync(peer, { graceMs: pullGraceMs })
  }

  // ---- the responder -------------------------------------------------------------------

  async function serve(stream: Stream, connection: Connection): Promise<void> {
    const ch = frameChannel<PullFrame, ResponderFrame>(stream, pullFrameSchema, MAX_PULL_FRAME_BYTES, {
      label: 'ledger sync',
    })
    const peer = connection.remotePeer.toString()
    if (serving >= maxServing) {
      stats.busyRefusals++
      const busy = new SubstrateError('E_LEDGER_SYNC_BUSY', 'this node serves as many ledger syncs as it can')
      await ch.write(errorFrame('error', busy), 2_000).catch(() => {})
      await ch.close(2_000)
      return
    }
    serving++
    const deadline = AbortSignal.timeout(sessionTimeoutMs)
    try {
      const request = await ch.read({ timeoutMs: frameTimeoutMs, signal: stopping.signal })
      const plan = diff(ledger.log.heads(), headsFromJSON(request))
      const limit = Math.min(request.maxOps, maxOpsPerSession)
      const { forkProofs } = ledger.log.opsFor({ forkProofs: plan.forkProofs, probes: [], ranges: [] })
      for (let i = 0; i < forkProofs.length; i += MAX_FRAME_PROOFS) {
        const proofs = forkProofs
          .slice(i, i + MAX_FRAME_PROOFS)
          .map(({ first, second }) => ({ first, second }))
        await ch.write({ t: 'forks', proofs }, frameTimeoutMs)
      }
      let sent = 0
      let frame: Uint8Array[] = []
      let frameBytes = 0
      const flush = async () => {
        if (frame.length === 0) return
        await ch.write({ t: 'ops', ops: frame }, frameTimeoutMs)
        frame = []
        frameBytes = 0
      }
      const push = async (op: Uint8Array) => {
        if (frame.length >= MAX_FRAME_OPS || frameBytes + op.length > MAX_OPS_FRAME_BYTES) await flush()
        frame.push(op)
        frameBytes += op.length
        sent++
      }
      for (const op of ledger.log.opsFor({ forkProofs: [], probes: plan.probes, ranges: [] }, limit).ops) {
        await push(op)
      }
      let more = false
      // Each author's range in slices of one frame, read as they are sent: memory stays
      // one frame whatever the difference.
      ranges: for (const range of plan.ranges) {
        for (let from = range.from; from <= range.to; ) {
          if (sent >= limit || deadline.aborted || stopping.signal.aborted) {
            more = true
            break ranges
          }
          const slice = { author: range.author, from, to: Math.min(range.to, from + MAX_FRAME_OPS - 1) }
          const { ops } = ledger.log.opsFor({ forkProofs: [], probes: [], ranges: [slice] }, limit - sent)
          if (ops.length === 0) break
          for (const op of ops) await push(op)
          from += ops.length
        }
      }
      await flush()
      await ch.write({ t: 'end', more }, frameTimeoutMs)
      await ch.close(frameTimeoutMs)
      stats.served++
      stats.servedOps += sent
    } catch (err) {
      const error = toSubstrateError(err)
      log.debug('ledger sync serve failed', { peer, code: error.code, error: error.message })
      if (error.code === 'E_PROTOCOL' || error.code === 'E_RECORD_TOO_LARGE') {
        await ch.write(errorFrame('error', error), 2_000).catch(() => {})
      }
      ch.reset(error.code)
    } finally {
      serving--
    }
  }

  // ---- heads gossip --------------------------------------------------------------------

  /** Per origin: announcement tokens left and when they were counted. */
  const buckets = new Map<string, { tokens: number; at: number }>()

  const validate = (_from: PeerId, msg: Message): TopicValidatorResult => {
    if (msg.type !== 'signed') {
      stats.announcementsRejected++
      return TopicValidatorResult.Reject
    }
    const origin = msg.from.toString()
    const now = Date.now()
    // Cheap before anything else: one announcement per origin per gap on average is plenty,
    // in small bursts (a loaded machine delivers honest ones in clumps; dropping the one that
    // carries ops would cost every node behind us a pull).
    const bucket = buckets.get(origin)
    const tokens =
      bucket === undefined
        ? announcementBurst
        : Math.min(announcementBurst, bucket.tokens + (now - bucket.at) / Math.max(1, minAnnouncementGapMs))
    if (tokens < 1) {
      stats.announcementsDropped++
      return TopicValidatorResult.Ignore
    }
    let theirs: Announcement
    try {
      theirs = decodeAnnouncement(msg.data)
    } catch {
      stats.announcementsRejected++
      return TopicValidatorResult.Reject
    }
    const pushed = theirs.ops
    if (pushed !== undefined && origin !== self) {
      // Eager push: the origin's own newest ops, so that one gossip round spreads them
      // without a pull per hop. They get the same checks as synced ops; only the origin's
      // own ops may ride along, and one that no honest node would send rejects the message.
      let added = 0
      try {
        for (const op of pushed) if (!sameAuthor(op, origin)) throw new Error('an op of another author')
        const ingested = ingestingAs('push', () => ledger.log.ingestMany(pushed))
        added = ingested.added
        const bad = ingested.refused.find(({ error }) => !BENIGN.has(error.reason))
        if (bad !== undefined) throw bad.error
      } catch (err) {
        stats.pushedOpsAdded += added
        stats.announcementsRejected++
        log.debug('rejected a heads announcement', { origin, error: toSubstrateError(err).message })
        return TopicValidatorResult.Reject
      }
      stats.pushedOpsAdded += added
    }
    buckets.delete(origin)
    buckets.set(origin, { tokens: tokens - 1, at: now })
    if (buckets.size > 8192) buckets.delete(buckets.keys().next().value ?? '')
    announced.delete(origin)
    announced.set(origin, { summary: theirs, at: now })
    if (announced.size > 8192) announced.delete(announced.keys().next().value ?? '')
    stats.announcementsAccepted++
    if (origin !== self) consider(origin)
    return TopicValidatorResult.Accept
  }

  // Anti-entropy: unchanged heads are announced again one keep-alive after our last
  // announcement, whatever prompted it, so a node whose ledger changes often sends no
  // keep-alives at all. Jittered (±25%), so that nodes started together do not announce, and
  // pull from one another, in step.
  const armKeepAlive = () => {
    clearTimeout(keepAlive)
    if (!running) return
    keepAlive = setTimeout(
      () => {
        keepAlive = undefined
        announce()
      },
      keepAliveMs * (0.75 + Math.random() / 2),
    )
    keepAlive.unref()
  }

  const publish = async () => {
    if (!running) return
    lastAnnounce = Date.now()
    armKeepAlive()
    try {
      const ops = ownOpsOverflow ? [] : ownOps
      ownOps = []
      ownOpsBytes = 0
      ownOpsOverflow = false
      await libp2p.services.pubsub.publish(LEDGER_HEADS_TOPIC, encodeAnnouncement({ ...summary(), ops }))
      stats.announced++
    } catch (err) {
      log.debug('heads announcement failed', { error: toSubstrateError(err).message })
    }
  }

  /** Announces our heads in `delayMs` at the earliest (sooner if already asked sooner). */
  function announce(delayMs = 0): void {
    if (!running) return
    const now = Date.now()
    const at = Math.max(now + delayMs, lastAnnounce + minAnnounceGapMs)
    if (pendingAnnounce !== undefined) {
      if (pendingAnnounceAt <= at) return
      clearTimeout(pendingAnnounce)
    }
    pendingAnnounceAt = at
    pendingAnnounce = setTimeout(() => {
      pendingAnnounce = undefined
      void publish()
    }, at - now)
  }

  // One debug line per batch of changes: what we hold now and where it came from (the
  // convergence bench reads these to time each node's catching up).
  const logHeads = () => {
    headsLog = undefined
    const s = summary()
    log.debug('ledger heads', {
      total: s.total,
      authors: s.authors,
      digest: Buffer.from(s.digest).toString('hex').slice(0, 16),
      via: changeCause,
    })
    changeCause = undefined
  }

  const onChange = (op?: LedgerOp) => {
    cached = undefined
    changeCause ??= cause
    headsLog ??= setImmediate(logHeads)
    if (op !== undefined && op.author === self) {
      if (ownOps.length < MAX_ANNOUNCE_OPS && ownOpsBytes + op.bytes.length <= MAX_ANNOUNCE_OPS_BYTES) {
        ownOps.push(op.bytes)
        ownOpsBytes += op.bytes.length
      } else ownOpsOverflow = true
    }
    // Ops that came by eager push were flooded to everyone already, and ops we pulled were
    // announced by the peer we pulled them from (or by their author, to everyone): say so a
    // little later, and in one announcement (others' copies, and the next pulls of a mesh
    // that is starting up, arrive meanwhile). Only our own ops are announced at once.
    announce(cause === 'local' ? 0 : relayAnnounceDelayMs * (1 + Math.random()))
  }

  const speaksSync = (protocols: readonly string[]) => protocols.includes(LEDGER_SYNC_PROTOCOL)
  const onIdentify = (evt: CustomEvent<IdentifyResult>) => {
    if (!speaksSync(evt.detail.protocols)) return
    const peer = evt.detail.peerId.toString()
    // A new connection is a fresh start after a lost one (a healed partition), not after
    // hostility; and whatever the peer announced before, pull once now.
    const state = stateOf(peer)
    state.notBefore = Math.min(state.notBefore, state.hostileUntil)
    state.pulledFor = undefined
    clearTimeout(state.timer)
    state.timer = undefined
    requestSync(peer)
  }
  // A peer that starts syncing after we connected tells us by an identify push.
  const onPeerUpdate = (evt: CustomEvent<PeerUpdate>) => {
    const { peer, previous } = evt.detail
    if (!speaksSync(peer.protocols) || (previous !== undefined && speaksSync(previous.protocols))) return
    if (libp2p.getConnections(peer.id).length > 0) requestSync(peer.id.toString())
  }
  // An announcement made before a peer subscribed reached nobody: a new subscriber gets one,
  // a little later, so that the many subscribers of a mesh starting up share one (each
  // announcement floods the whole mesh, and every node verifies it).
  const onSubscriptionChange = (evt: CustomEvent<SubscriptionChangeData>) => {
    if (evt.detail.subscriptions.some((s) => s.topic === LEDGER_HEADS_TOPIC && s.subscribe)) {
      announce(relayAnnounceDelayMs)
    }
  }

  return {
    async start() {
      if (running) return
      running = true
      stopping = new AbortController()
      await libp2p.handle(
        LEDGER_SYNC_PROTOCOL,
        (stream, connection) => {
          serve(stream, connection).catch((err: unknown) => {
            stream.abort(toSubstrateError(err))
          })
        },
        { maxInboundStreams: 4 },
      )
      offChange = ledger.onChange(onChange)
      const pubsub = libp2p.services.pubsub
      pubsub.topicValidators.set(LEDGER_HEADS_TOPIC, validate)
      pubsub.addEventListener('subscription-change', onSubscriptionChange)
      pubsub.subscribe(LEDGER_HEADS_TOPIC)
      if (syncOnConnect) {
        libp2p.addEventListener('peer:identify', onIdentify)
        libp2p.addEventListener('peer:update', onPeerUpdate)
        for (const connection of libp2p.getConnections()) {
          const peer = await libp2p.peerStore.get(connection.remotePeer).catch(() => undefined)
          if (peer !== undefined && speaksSync(peer.protocols)) requestSync(connection.remotePeer.toString())
        }
      }
      headsLog ??= setImmediate(logHeads)
      announce()
    },
    async stop() {
      if (!running) return
      running = false
      stopping.abort(new SubstrateError('E_CANCELLED', 'ledger sync is stopping'))
      clearTimeout(keepAlive)
      keepAlive = undefined
      clearTimeout(pendingAnnounce)
      pendingAnnounce = undefined
      if (headsLog !== undefined) clearImmediate(headsLog)
      headsLog = undefined
      for (const state of peers.values()) clearTimeout(state.timer)
      peers.clear()
      queue.length = 0
      offChange?.()
      libp2p.removeEventListener('peer:identify', onIdentify)
      libp2p.removeEventListener('peer:update', onPeerUpdate)
      const pubsub = libp2p.services.pubsub
      pubsub.removeEventListener('subscription-change', onSubscriptionChange)
      pubsub.topicValidators.delete(LEDGER_HEADS_TOPIC)
      if (libp2p.status === 'started') {
        pubsub.unsubscribe(LEDGER_HEADS_TOPIC)
        await libp2p.unhandle(LEDGER_SYNC_PROTOCOL)
      }
      await Promise.allSettled([...inflight.values()])
    },
    syncWith,
    requestSync,
    announce,
    summary,
    stats: () => ({ ...stats }),
    onSync(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
  }
}
