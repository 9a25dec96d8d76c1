// The credits ledger as one subsystem: the op logs (log.ts) plus the balance fold
// (balances.ts) kept current as ops arrive, with checkpoints so a restart folds only what
// is new. The composition root (src/node.ts) makes one with the daemon's database; sync,
// the API and the worker's admission read it through this object.

import type { Identity } from '../identity/keys.ts'
import type { Db } from '../store/database.ts'
import {
  forEachLedgerFact,
  getLedgerCheckpoint,
  lastLedgerRowid,
  listLedgerForks,
  saveLedgerCheckpoint,
} from '../store/ledger-table.ts'
import {
  allBalances,
  applyFork,
  applyOp,
  createFoldState,
  DEFAULT_LEDGER_PARAMS,
  type FoldState,
  type LedgerParams,
  type MemberBalance,
  balanceOf as memberBalance,
  memberOf,
} from './balances.ts'
import { type BalanceExplanation, explainBalance } from './explain.ts'
import { restoreFoldState, serializeFoldState } from './fold-checkpoint.ts'
import { createLedgerLog, type LedgerLog } from './log.ts'
import type { LedgerOp, OpDraft, OpFacts } from './ops.ts'
import type { Standing } from './priority.ts'

export interface LedgerComponents {
  db: Db
}

export interface LedgerInit {
  params?: Partial<LedgerParams>
  now?: () => number
  /** Save a checkpoint after this many new ops (and on stop). */
  checkpointEvery?: number
  checkpointName?: string
}

export interface Ledger {
  readonly log: LedgerLog
  start(): void
  stop(): void
  append(identity: Identity, draft: OpDraft): LedgerOp
  /** The member a node's credits belong to (itself when unbound). */
  memberOf(node: string): string
  balanceOf(member: string): MemberBalance
  balances(): MemberBalance[]
  explain(member: string): BalanceExplanation
  /** The authors of a vouch op for `member`, whether or not their vouch counts yet. */
  vouchersOf(member: string): string[]
  /** What a worker's queue needs to know about a requester node. */
  standingOf(node: string): Standing
  /** Writes a checkpoint now. */
  checkpoint(): void
  /** Called after an op joined the ledger (appended or ingested; with the op) or an author was frozen. */
  onChange(listener: (op?: LedgerOp) => void): () => void
  /** The live fold state (read-only use: tests and benchmarks). */
  readonly state: FoldState
}

/** Folds the ops stored after arrival position `afterRowid` into `state`. */
export function foldStoredOps(db: Db, state: FoldState, afterRowid = 0): void {
  forEachLedgerFact(db, afterRowid, (cid, author, at, facts) => {
    applyOp(state, { cid, author, at, facts: JSON.parse(facts) as OpFacts })
  })
}

export function createLedger(components: LedgerComponents, init: LedgerInit = {}): Ledger {
  const { db } = components
  const params: LedgerParams = { ...DEFAULT_LEDGER_PARAMS, ...init.params }
  const now = init.now ?? Date.now
  const checkpointEvery = init.checkpointEvery ?? 10_000
  const checkpointName = init.checkpointName ?? 'balances'
  let state = createFoldState(params)
  let started = false
  let sinceCheckpoint = 0
  const changeListeners = new Set<(op?: LedgerOp) => void>()
  const changed = (op?: LedgerOp) => {
    for (const listener of changeListeners) listener(op)
  }

  const rawLog = createLedgerLog(
    { db },
    {
      now,
      events: {
        onOp(op) {
          changed(op)
          if (!started) return
          applyOp(state, op)
          // Also in proportion to the ledger, so that saving (linear in its size) stays a
          // bounded cost per op however large the ledger grows.
          if (++sinceCheckpoint >= Math.max(checkpointEvery, state.receipts.size / 4)) checkpoint()
        },
        onFork(author) {
          if (started) applyFork(state, author)
          changed()
        },
      },
    },
  )

  // The fold follows ops as they are stored. If a batch's transaction rolls back (an
  // unexpected error, not a refused op), the fold has seen ops the database has not:
  // fold again from the database before passing the error on.
  const log: LedgerLog = {
    ...rawLog,
    ingestMany(batch) {
      try {
        return rawLog.ingestMany(batch)
      } catch (err) {
        if (started) load()
        throw err
      }
    },
  }

  function checkpoint(): void {
    saveLedgerCheckpoint(db, {
      name: checkpointName,
      through: lastLedgerRowid(db),
      state: serializeFoldState(state),
      savedAt: now(),
    })
    sinceCheckpoint = 0
  }

  function load(): void {
    const saved = getLedgerCheckpoint(db, checkpointName)
    let through = 0
    state = createFoldState(params)
    if (saved !== undefined) {
      try {
        state = restoreFoldState(saved.state, params)
        through = saved.through
      } catch {
        // A checkpoint we cannot read is only a lost shortcut: fold everything instead.
        state = createFoldState(params)
      }
    }
    for (const f of listLedgerForks(db)) applyFork(state, f.author)
    foldStoredOps(db, state, through)
  }

  const standingOf = (node: string): Standing => {
    const member = memberOf(state, node)
    const b = memberBalance(state, member, now())
    return { member, balance: b.balance, floorLeftToday: b.floorLeftToday }
  }

  return {
    log,
    get state() {
      return state
    },
    start() {
      if (started) return
      load()
      started = true
    },
    stop() {
      if (!started) return
      checkpoint()
      started = false
    },
    append: (identity, draft) => log.append(identity, draft, { now: now() }),
    memberOf: (node) => memberOf(state, node),
    balanceOf: (member) => memberBalance(state, member, now()),
    balances: () => allBalances(state, now()),
    explain: (member) => explainBalance(state, member, now()),
    vouchersOf: (member) => [...(state.vouches.get(member) ?? [])],
    standingOf,
    checkpoint,
    onChange(listener) {
      changeListeners.add(listener)
      return () => changeListeners.delete(listener)
    },
  }
}
