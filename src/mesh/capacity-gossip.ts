// Capacity gossip (DESIGN.md, "Discovery"): every node publishes a signed capacity record on
// `substrate/capacity/1` when it changes and, as a keep-alive, every 60 s besides. Changes are
// found by comparing the snapshot every 2 s (local work, nothing on the wire), so a change
// anywhere (a job starts, a model loads or unloads, a model is pulled) is announced within
// ~2.5 s whether or not its subsystem says so; the keep-alive only keeps a quiet node in
// others' views, so it can be slow. Every record reaches every node, so the record rate times
// the node count is each node's gossip cost (BENCHMARKS.md, "Mesh discovery and gossip cost").
// The view keeps everyone else's last record. The topic validator is the one gate: it
// rate-limits each origin before doing any crypto, then verifies; a rejected record is never
// delivered or forwarded, and gossipsub's peer scoring charges whoever relayed it. A little
// over the rate is ignored (an honest burst, or jitter along a relay path); far over it is a
// flood, and rejected like an invalid record, so the flooder's score sinks until it is
// graylisted.

import type { Message, SubscriptionChangeData } from '@libp2p/gossipsub'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { toSubstrateError } from '../errors.ts'
import type { Identity } from '../identity/keys.ts'
import type { Logger } from '../logger.ts'
import {
  type CapacityRecord,
  type CapacitySnapshot,
  signCapacityRecord,
  verifyCapacityRecord,
} from './capacity-record.ts'
import { CAPACITY_TOPIC, type MeshNode } from './libp2p-node.ts'

export interface CapacityEntry {
  peer: string
  record: CapacityRecord
  /** Unix ms when we last accepted a record from this peer. */
  lastSeen: number
  /** Unix ms after which the signed record itself is no longer valid. */
  expires: number
}

export interface CapacityGossipStats {
  published: number
  accepted: number
  /** Invalid records (bad signature, wrong signer, bad shape, expired): rejected and scored. */
  rejected: number
  /** Records over a peer's rate: dropped without verifying and not forwarded. */
  rateLimited: number
  /** Of those, records so far over the rate that they count as a flood: rejected and scored. */
  flooded: number
  /** Records from new peers dropped because the view was full. */
  overflow: number
}

export interface CapacityGossipInit {
  /** Keep-alive: a record is published this often even when nothing changed. */
  publishIntervalMs?: number
  /** How often the snapshot is compared with the last one published (a change publishes soon). */
  changeCheckMs?: number
  /** An entry not refreshed for this long leaves the view (default 3 keep-alives). */
  staleAfterMs?: number
  /** Lifetime of our own records; peers drop them after it even if we vanish silently. */
  recordTtlMs?: number
  /** Per-origin token bucket: sustained records per second and burst. */
  ratePerSecond?: number
  rateBurst?: number
  /** Shortest gap between two of our own publishes, so change bursts do not trip peers' limits. */
  minPublishGapMs?: number
  /** Most peers the view holds. */
  maxPeers?: number
}

export interface CapacityGossip {
  start(): Promise<void>
  stop(): Promise<void>
  /** Call when the snapshot changed (model loaded, job started…): publishes soon. */
  notifyChanged(): void
  view(): CapacityEntry[]
  get(peer: string): CapacityEntry | undefined
  stats(): CapacityGossipStats
  /** Called after the view changed (a record arrived, or an entry went stale). */
  onChange(listener: (view: CapacityEntry[]) => void): () => void
}

export function createCapacityGossip(
  components: { mesh: MeshNode; identity: Identity; logger: Logger; snapshot: () => CapacitySnapshot },
  init: CapacityGossipInit = {},
): CapacityGossip {
  const log = components.logger.child('capacity')
  const pubsub = components.mesh.libp2p.services.pubsub
  const publishIntervalMs = init.publishIntervalMs ?? 60_000
  const changeCheckMs = init.changeCheckMs ?? 2_000
  const staleAfterMs = init.staleAfterMs ?? 3 * publishIntervalMs
  // Outlives the stale bound, so a record is dropped for silence before it expires (within
  // the 5 minutes a capacity envelope may live).
  const recordTtlMs = init.recordTtlMs ?? Math.min(Math.max(60_000, 6 * publishIntervalMs), 5 * 60_000)
  const ratePerSecond = init.ratePerSecond ?? 2
  const rateBurst = init.rateBurst ?? 5
  // Our own publishes never exceed the rate peers allow us, however fast our state changes.
  const minPublishGapMs = Math.max(init.minPublishGapMs ?? 500, 1000 / ratePerSecond)
  // How far past an empty bucket an origin may go before it counts as flooding.
  const floodMargin = 2 * rateBurst
  const maxPeers = init.maxPeers ?? 4096

  const entries = new Map<string, CapacityEntry>()
  const buckets = new Map<string, { tokens: number; at: number }>()
  const listeners = new Set<(view: CapacityEntry[]) => void>()
  const stats: CapacityGossipStats = {
    published: 0,
    accepted: 0,
    rejected: 0,
    rateLimited: 0,
    flooded: 0,
    overflow: 0,
  }
  let interval: NodeJS.Timeout | undefined
  let changeCheck: NodeJS.Timeout | undefined
  /** The last snapshot published, to tell a change from a keep-alive. */
  let lastSnapshot = ''
  let pending: NodeJS.Timeout | undefined
  let lastPublish = 0
  let running = false

  const view = () => [...entries.values()].map((e) => ({ ...e }))
  const emit = () => {
    const snapshot = view()
    for (const listener of listeners) listener(snapshot)
  }

  /** 'ok' takes a token; 'over' is past the rate; 'flood' is far past it (the debt keeps growing). */
  const allow = (peer: string, now: number): 'ok' | 'over' | 'flood' => {
    const bucket = buckets.get(peer) ?? { tokens: rateBurst, at: now }
    bucket.tokens = Math.min(rateBurst, bucket.tokens + ((now - bucket.at) / 1000) * ratePerSecond)
    bucket.at = now
    // Re-inserted so the Map stays in least-recently-seen order; fresh keys cost a spammer
    // nothing, so the oldest bucket goes once there are too many.
    buckets.delete(peer)
    buckets.set(peer, bucket)
    if (buckets.size > 4 * maxPeers) buckets.delete(buckets.keys().next().value ?? '')
    // The debt is capped so a flooder that stops is forgiven at the normal refill rate.
    bucket.tokens = Math.max(bucket.tokens - 1, -floodMargin - 1)
    if (bucket.tokens >= 0) return 'ok'
    return bucket.tokens < -floodMargin ? 'flood' : 'over'
  }

  const validate = (_from: unknown, msg: Message): TopicValidatorResult => {
    // StrictSign makes every message carry its origin; an unsigned one cannot be attributed.
    if (msg.type !== 'signed') {
      stats.rejected++
      return TopicValidatorResult.Reject
    }
    const source = msg.from.toString()
    const now = Date.now()
    const rate = allow(source, now)
    if (rate !== 'ok') {
      stats.rateLimited++
      // Ignore, not Reject, just over the rate: an honest relay of a burst should not lose
      // score, but the excess is neither delivered nor forwarded.
      if (rate === 'over') return TopicValidatorResult.Ignore
      stats.flooded++
      return TopicValidatorResult.Reject
    }
    let record: CapacityRecord
    let expires: number
    try {
      const env = verifyCapacityRecord(msg.data, source, now)
      record = env.payload
      expires = env.expires
    } catch (err) {
      stats.rejected++
      log.debug('rejected capacity record', { source, error: toSubstrateError(err).message })
      return TopicValidatorResult.Reject
    }
    const previous = entries.get(source)
    // Gossip may deliver an older record after a newer one; it must not roll the view back.
    if (previous !== undefined && previous.record.at >= record.at) return TopicValidatorResult.Ignore
    // Keys cost nothing, so the view is bounded: a full view admits no new peers until
    // entries go stale (vouching and reputation will decide whom to prefer).
    if (previous === undefined && entries.size >= maxPeers) {
      stats.overflow++
      return TopicValidatorResult.Ignore
    }
    entries.set(source, { peer: source, record, lastSeen: now, expires })
    stats.accepted++
    emit()
    return TopicValidatorResult.Accept
  }

  const publish = async () => {
    if (!running) return
    lastPublish = Date.now()
    try {
      const snapshot = components.snapshot()
      lastSnapshot = JSON.stringify(snapshot)
      const bytes = signCapacityRecord(components.identity, snapshot, {
        ttlMs: recordTtlMs,
      })
      await pubsub.publish(CAPACITY_TOPIC, bytes)
      stats.published++
    } catch (err) {
      log.warn('capacity publish failed', { error: toSubstrateError(err).message })
    }
  }

  const schedulePublish = () => {
    if (!running || pending !== undefined) return
    const wait = Math.max(0, lastPublish + minPublishGapMs - Date.now())
    pending = setTimeout(() => {
      pending = undefined
      void publish()
    }, wait)
  }

  const pruneStale = () => {
    const now = Date.now()
    let changed = false
    for (const [peer, entry] of entries) {
      if (now - entry.lastSeen > staleAfterMs || now >= entry.expires) {
        entries.delete(peer)
        changed = true
      }
    }
    // Buckets of peers we have not heard from refill fully anyway; dropping them bounds memory.
    for (const [peer, bucket] of buckets) if (now - bucket.at > 60_000) buckets.delete(peer)
    if (changed) emit()
  }

  // A record published before a peer's subscription arrives reaches nobody, so a new
  // subscriber gets a fresh record right away instead of waiting for the next interval.
  const onSubscriptionChange = (evt: CustomEvent<SubscriptionChangeData>) => {
    if (evt.detail.subscriptions.some((s) => s.topic === CAPACITY_TOPIC && s.subscribe)) schedulePublish()
  }

  return {
    async start() {
      if (running) return
      running = true
      pubsub.topicValidators.set(CAPACITY_TOPIC, validate)
      pubsub.addEventListener('subscription-change', onSubscriptionChange)
      pubsub.subscribe(CAPACITY_TOPIC)
      interval = setInterval(() => {
        pruneStale()
        schedulePublish()
      }, publishIntervalMs)
      interval.unref()
      changeCheck = setInterval(() => {
        if (JSON.stringify(components.snapshot()) !== lastSnapshot) schedulePublish()
      }, changeCheckMs)
      changeCheck.unref()
      schedulePublish()
    },
    async stop() {
      running = false
      clearInterval(interval)
      clearInterval(changeCheck)
      clearTimeout(pending)
      pending = undefined
      pubsub.removeEventListener('subscription-change', onSubscriptionChange)
      pubsub.topicValidators.delete(CAPACITY_TOPIC)
      if (components.mesh.libp2p.status === 'started') pubsub.unsubscribe(CAPACITY_TOPIC)
    },
    notifyChanged: schedulePublish,
    view,
    get: (peer) => {
      const entry = entries.get(peer)
      return entry === undefined ? undefined : { ...entry }
    },
    stats: () => ({ ...stats }),
    onChange(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
  }
}
