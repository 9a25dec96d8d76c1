// `substrate ledger verify` and `stats`: what the node's ledger holds, and whether it still
// holds up. Verifying re-checks every stored op from its bytes (signature, body, chain
// link, the facts the fold read) and folds the whole ledger cold, comparing the result
// with the live, incrementally kept balances: a disagreement means a bug or a tampered
// database, never a peer's fault (peers' ops were checked on the way in). It costs a few
// signature checks per op, so it yields to the event loop after every page: the daemon
// keeps answering while a large ledger is re-verified.

import { createHash } from 'node:crypto'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import type { Db } from '../store/database.ts'
import {
  countLedgerOps,
  getLedgerCheckpoint,
  listLedgerForks,
  listLedgerHeads,
  listLedgerOpsOf,
} from '../store/ledger-table.ts'
import { allBalances, applyFork, createFoldState, type MemberBalance } from './balances.ts'
import { foldStoredOps, type Ledger } from './ledger.ts'
import { createVerifiedReceiptCache, decodeOp, type VerifiedReceiptCache } from './ops.ts'

export interface LedgerProblem {
  author: string
  seq: number
  problem: string
}

export interface LedgerAudit {
  ok: boolean
  ops: number
  authors: number
  /** Ops that failed a re-check (at most 100 listed). */
  problems: LedgerProblem[]
  /** Whether a cold fold of every op gives the live balances. */
  balancesMatch: boolean
  /** Members whose cold and live balances differ (at most 100). */
  mismatched: string[]
  tookMs: number
}

const PAGE = 200
const MAX_LISTED = 100

/** Re-verifies the whole ledger in one go (tools, tests). */
export function auditLedger(db: Db, ledger: Ledger, now = Date.now()): LedgerAudit {
  const steps = auditSteps(db, ledger, now)
  for (;;) {
    const step = steps.next()
    if (step.done === true) return step.value
  }
}

/** The same, giving the event loop a turn after every page of ops (the daemon's route). */
export async function auditLedgerYielding(db: Db, ledger: Ledger, now = Date.now()): Promise<LedgerAudit> {
  const steps = auditSteps(db, ledger, now)
  for (;;) {
    const step = steps.next()
    if (step.done === true) return step.value
    await yieldToLoop()
  }
}

function* auditSteps(db: Db, ledger: Ledger, now: number): Generator<void, LedgerAudit> {
  const started = performance.now()
  const problems: LedgerProblem[] = []
  // A receipt is usually in two logs (worker's and requester's): verify its signatures once.
  const receipts = createVerifiedReceiptCache()
  let ops = 0
  const heads = listLedgerHeads(db)
  for (const head of heads) {
    let prev: string | null = null
    let prevAt = 0
    for (let from = 1; from <= head.seq; from += PAGE) {
      const rows = listLedgerOpsOf(db, head.author, from, Math.min(head.seq, from + PAGE - 1))
      for (const row of rows) {
        ops++
        const problem = recheck(row, prev, prevAt, now, receipts)
        if (problem !== undefined && problems.length < MAX_LISTED) {
          problems.push({ author: head.author, seq: row.seq, problem })
        }
        prev = row.cid
        prevAt = row.at
      }
      const expected = Math.min(head.seq, from + PAGE - 1) - from + 1
      if (rows.length !== expected && problems.length < MAX_LISTED) {
        problems.push({ author: head.author, seq: from, problem: `chain has gaps near seq ${from}` })
      }
      yield
    }
  }
  const frozen = listLedgerForks(db).map((f) => f.author)
  const coldState = createFoldState(ledger.state.params)
  for (const author of frozen) applyFork(coldState, author)
  foldStoredOps(db, coldState)
  const cold = allBalances(coldState, now)
  const mismatched = diffBalances(cold, ledger.balances())
  return {
    ok: problems.length === 0 && mismatched.length === 0,
    ops,
    authors: heads.length,
    problems,
    balancesMatch: mismatched.length === 0,
    mismatched: mismatched.slice(0, MAX_LISTED),
    tookMs: Math.round(performance.now() - started),
  }
}

function recheck(
  row: { cid: string; seq: number; at: number; facts: string; bytes: Uint8Array },
  prev: string | null,
  prevAt: number,
  now: number,
  receipts: VerifiedReceiptCache,
): string | undefined {
  try {
    const op = decodeOp(row.bytes, { now: Math.max(now, row.at), receipts })
    if (op.cid !== row.cid) return 'stored CID is not the hash of its bytes'
    if (op.seq !== row.seq) return `stored at seq ${row.seq}, signed as seq ${op.seq}`
    if (op.prev !== prev) return 'does not link to the op before it'
    if (op.at < prevAt) return 'dated before the op before it'
    if (JSON.stringify(op.facts) !== row.facts) return 'stored facts differ from what its bytes say'
    return undefined
  } catch (err) {
    return err instanceof Error ? err.message : String(err)
  }
}

function diffBalances(a: MemberBalance[], b: MemberBalance[]): string[] {
  const key = (m: MemberBalance) => JSON.stringify([m.earned, m.spent, m.floorCovered, m.balance, m.frozen])
  const left = new Map(a.map((m) => [m.member, key(m)]))
  const right = new Map(b.map((m) => [m.member, key(m)]))
  const members = new Set([...left.keys(), ...right.keys()])
  return [...members].filter((m) => left.get(m) !== right.get(m)).sort()
}

export interface LedgerStats {
  ops: number
  /** Authors with a log here. */
  authors: number
  members: number
  /** Distinct receipts, however many logs carry each. */
  receipts: number
  frozen: string[]
  /** Members with a non-zero earned or spent. */
  balances: number
  /**
   * sha-256 of every author's (seq, head) and the frozen set: two nodes with the same digest
   * hold the same ledger, so their balances agree.
   */
  headsDigest: string
  checkpoint: { through: number; savedAt: string } | null
}

export function ledgerStats(db: Db, ledger: Ledger, checkpointName = 'balances'): LedgerStats {
  const heads = listLedgerHeads(db)
  const frozen = listLedgerForks(db)
    .map((f) => f.author)
    .sort()
  const hash = createHash('sha256')
  for (const h of heads) hash.update(`${h.author} ${h.seq} ${h.head}\n`)
  for (const f of frozen) hash.update(`frozen ${f}\n`)
  const saved = getLedgerCheckpoint(db, checkpointName)
  return {
    ops: countLedgerOps(db),
    authors: heads.length,
    members: ledger.state.geneses.size,
    receipts: ledger.state.receipts.size,
    frozen,
    balances: ledger.balances().length,
    headsDigest: hash.digest('hex'),
    checkpoint:
      saved === undefined ? null : { through: saved.through, savedAt: new Date(saved.savedAt).toISOString() },
  }
}
