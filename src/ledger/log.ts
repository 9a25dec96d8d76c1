// The op logs: every author's hash-chained log, stored in SQLite, and the one place that
// decides whether an op from anywhere (sync, gossip, our own signing) joins the ledger.
//
// Ingest checks, cheapest first: size; duplicate by CID (a re-sent op costs a hash and an
// index lookup, no signature check); signature, time and body (ops.ts decodeOp); frozen
// author; then the chain. A second, different, validly signed op at a taken (author, seq)
// is a fork proof: it is stored and the author frozen (balances void all its ops).
//
// Gaps are refused, not buffered: an op whose predecessors we lack cannot have its chain
// link checked, so buffering it would let any peer park unverifiable bytes in our memory.
// The refusal (LedgerError reason 'gap') says exactly which seqs are missing, so the sync
// layer pulls them and re-sends; a sync peer sends each author's ops in seq order anyway.

import { cidOf } from '../identity/envelope.ts'
import type { Identity } from '../identity/keys.ts'
import { recordTypeSpec } from '../protocol/domains.ts'
import type { Db } from '../store/database.ts'
import {
  getLedgerFork,
  getLedgerHead,
  getLedgerOpAt,
  hasLedgerOp,
  insertLedgerFork,
  insertLedgerOp,
  listLedgerForks,
  listLedgerHeads,
  listLedgerOpsOf,
} from '../store/ledger-table.ts'
import { isLedgerError, LedgerError } from './ledger-error.ts'
import { createVerifiedReceiptCache, decodeOp, type LedgerOp, type OpDraft, signOp } from './ops.ts'
import type { Heads, SyncPlan } from './vector.ts'

/** Most ops one ingestMany call takes, and their most bytes: a sync batch is bounded. */
export const MAX_BATCH_OPS = 1000
export const MAX_BATCH_BYTES = 8 * 1024 * 1024

export type IngestResult =
  | { status: 'added'; op: LedgerOp }
  | { status: 'duplicate'; cid: string }
  | { status: 'fork'; author: string; seq: number }

export interface ForkProof {
  author: string
  seq: number
  first: Uint8Array
  second: Uint8Array
}

export interface IngestSummary {
  added: number
  duplicates: number
  forks: number
  refused: Array<{ index: number; error: LedgerError }>
}

export interface LedgerLogEvents {
  onOp?: (op: LedgerOp) => void
  onFork?: (author: string) => void
}

export interface LedgerLog {
  /** Validates and stores one op; throws LedgerError when refused. */
  ingest(bytes: Uint8Array): IngestResult
  /**
   * Ingests a batch in one transaction; refusals of single ops are collected, not thrown.
   * A batch over MAX_BATCH_OPS or MAX_BATCH_BYTES is refused whole (LedgerError 'oversize').
   */
  ingestMany(batch: readonly Uint8Array[]): IngestSummary
  /** Verifies a fork proof on its own (no chain needed) and freezes its author. */
  ingestForkProof(proof: { first: Uint8Array; second: Uint8Array }): boolean
  /** Signs and stores the next op of `identity`'s own log. */
  append(identity: Identity, draft: OpDraft, options?: { now?: number }): LedgerOp
  heads(): Heads
  isFrozen(author: string): boolean
  forkProofs(): ForkProof[]
  /** The bytes a peer with `plan` (from vector.ts `diff`) lacks, at most `limit` ops. */
  opsFor(plan: SyncPlan, limit?: number): { forkProofs: ForkProof[]; ops: Uint8Array[] }
}

export interface LedgerLogComponents {
  db: Db
}

export interface LedgerLogInit {
  /** Our clock; tests pass a fixed one. */
  now?: () => number
  events?: LedgerLogEvents
}

export function createLedgerLog(components: LedgerLogComponents, init: LedgerLogInit = {}): LedgerLog {
  const { db } = components
  const now = init.now ?? Date.now
  const events = init.events ?? {}
  const maxBytes = recordTypeSpec('ledger-op').maxBytes
  const frozen = new Set(listLedgerForks(db).map((f) => f.author))
  const receipts = createVerifiedReceiptCache()

  function freeze(author: string, seq: number, first: Uint8Array, second: Uint8Array): void {
    insertLedgerFork(db, { author, seq, first, second, detectedAt: now() })
    if (frozen.has(author)) return
    frozen.add(author)
    events.onFork?.(author)
  }

  function ingest(bytes: Uint8Array): IngestResult {
    if (bytes.length > maxBytes) {
      throw new LedgerError('oversize', `a ledger op of ${bytes.length} bytes exceeds ${maxBytes}`)
    }
    const cid = cidOf(bytes)
    if (hasLedgerOp(db, cid)) return { status: 'duplicate', cid }
    return admit(decodeOp(bytes, { now: now(), receipts }))
  }

  /** Stores a decoded (so verified) op that is not here yet, if it extends its author's chain. */
  function admit(op: LedgerOp): IngestResult {
    const { cid, bytes } = op
    if (frozen.has(op.author)) {
      const proof = getLedgerFork(db, op.author)
      if (proof !== undefined && cidOf(proof.second) === cid) return { status: 'duplicate', cid }
      throw new LedgerError('frozen', `${op.author} is frozen by a fork proof; its ops no longer count`)
    }
    const head = getLedgerHead(db, op.author)
    const have = head?.seq ?? 0
    if (op.seq <= have) {
      // Not a duplicate (checked by CID above), so a different op at a taken seq.
      const existing = getLedgerOpAt(db, op.author, op.seq)
      if (existing === undefined)
        throw new Error(`ledger: ${op.author} has no op at ${op.seq} below its head`)
      freeze(op.author, op.seq, existing.bytes, bytes)
      return { status: 'fork', author: op.author, seq: op.seq }
    }
    if (op.seq > have + 1) {
      throw new LedgerError(
        'gap',
        `op ${op.seq} of ${op.author} arrived before ops ${have + 1}..${op.seq - 1}`,
        {
          missing: { author: op.author, from: have + 1, to: op.seq - 1 },
        },
      )
    }
    if (op.prev !== (head?.head ?? null)) {
      throw new LedgerError('chain', `op ${op.seq} of ${op.author} does not link to op ${have}`)
    }
    if (head !== undefined && op.at < head.headAt) {
      throw new LedgerError('chain', `op ${op.seq} of ${op.author} is dated before op ${have}`)
    }
    insertLedgerOp(db, {
      cid,
      author: op.author,
      seq: op.seq,
      kind: op.kind,
      at: op.at,
      facts: JSON.stringify(op.facts),
      bytes,
    })
    events.onOp?.(op)
    return { status: 'added', op }
  }

  return {
    ingest,
    ingestMany(batch) {
      const bytes = batch.reduce((n, op) => n + op.length, 0)
      if (batch.length > MAX_BATCH_OPS || bytes > MAX_BATCH_BYTES) {
        // Refused whole and before any work: a peer that sends more is misbehaving.
        throw new LedgerError(
          'oversize',
          `a batch of ${batch.length} ops, ${bytes} bytes, exceeds ${MAX_BATCH_OPS} ops or ${MAX_BATCH_BYTES} bytes`,
        )
      }
      const summary: IngestSummary = { added: 0, duplicates: 0, forks: 0, refused: [] }
      db.transaction(() => {
        batch.forEach((bytes, index) => {
          try {
            const result = ingest(bytes)
            if (result.status === 'added') summary.added++
            else if (result.status === 'duplicate') summary.duplicates++
            else summary.forks++
          } catch (err) {
            if (!isLedgerError(err)) throw err
            summary.refused.push({ index, error: err })
          }
        })
      })
      return summary
    },
    ingestForkProof({ first, second }) {
      const a = decodeOp(first, { now: now() })
      const b = decodeOp(second, { now: now() })
      if (a.author !== b.author || a.seq !== b.seq || a.cid === b.cid) {
        throw new LedgerError('malformed', 'a fork proof is two different ops with one author and seq')
      }
      const wasFrozen = frozen.has(a.author)
      freeze(a.author, a.seq, first, second)
      return !wasFrozen
    },
    append(identity, draft, options = {}) {
      const head = getLedgerHead(db, identity.id)
      const at = Math.max(options.now ?? now(), head?.headAt ?? 0)
      // Decoded once as it is signed (the check that our own op is valid), and admitted as is.
      const op = signOp(
        identity,
        { ...draft, seq: (head?.seq ?? 0) + 1, prev: head?.head ?? null },
        { now: at, receipts },
      )
      const result = admit(op)
      if (result.status !== 'added') throw new Error(`ledger: own op was not added (${result.status})`)
      return op
    },
    heads() {
      return {
        vector: new Map(listLedgerHeads(db).map((h) => [h.author, { seq: h.seq, head: h.head }])),
        frozen: new Set(frozen),
      }
    },
    isFrozen: (author) => frozen.has(author),
    forkProofs: () =>
      listLedgerForks(db).map(({ author, seq, first, second }) => ({ author, seq, first, second })),
    opsFor(plan, limit = Number.POSITIVE_INFINITY) {
      const forkProofs: ForkProof[] = []
      for (const author of plan.forkProofs) {
        const f = getLedgerFork(db, author)
        if (f !== undefined) forkProofs.push({ author, seq: f.seq, first: f.first, second: f.second })
      }
      const ops: Uint8Array[] = []
      for (const probe of plan.probes) {
        if (ops.length >= limit) break
        const mine = getLedgerOpAt(db, probe.author, probe.seq)
        if (mine !== undefined && mine.cid !== probe.head) ops.push(mine.bytes)
      }
      for (const range of plan.ranges) {
        if (ops.length >= limit) break
        const to = Math.min(range.to, range.from + (limit - ops.length) - 1)
        for (const row of listLedgerOpsOf(db, range.author, range.from, to)) ops.push(row.bytes)
      }
      return { forkProofs, ops }
    },
  }
}
