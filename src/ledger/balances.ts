// Balances: a pure fold of the ledger's op set (DESIGN.md, "Credits ledger").
//
//   balance = earned − (spent − what the daily floors covered)
//
// `earned` comes only from countersigned receipts as worker, `spent` only from receipts as
// requester. Every rule is a function of the SET of ops, never of their order:
//   - a receipt counts once, however many logs carry it, if at least one carrier is not frozen;
//   - same-member receipts (worker and requester nodes bound to one member) mint nothing and
//     cost nothing;
//   - earnings per (worker member, requester member, UTC day) are capped: min(cap, Σ);
//   - each (requester member, UTC day) spends its floor first: charged = max(0, Σ − floor);
//   - a frozen author (fork proof) has all its ops voided: which of its ops came "before" the
//     fork depends on what a node saw first, so only voiding all of them converges;
//   - a frozen worker, or one with a fraud proof from a vouched member, mints nothing and costs
//     its requesters nothing;
//   - node → member comes from node-binding ops (earliest (at, cid) wins when a node consented
//     twice) and applies to all of the node's receipts; an unbound node is its own member.
// Sums of mins and maxes over groups are order-independent, which is what makes incremental
// updates equal the cold fold (fold-state.ts keeps the aggregates and says how).

import {
  contribute,
  type Derived,
  derive,
  emptyFoldState,
  type FoldState,
  floorFor,
  indexBinding,
  indexFraud,
  indexReceipt,
  indexVouch,
  internLogger,
  isCarried,
  isVoidWorker,
  type LedgerParams,
  type ReceiptEntry,
  rebind,
  refraud,
  resolve,
  revouch,
} from './fold-state.ts'
import type { OpFacts } from './ops.ts'

export type { FoldState, LedgerParams, ReceiptEntry } from './fold-state.ts'
export { receiptCredits } from './fold-state.ts'

/** Defaults until governance sets them (DESIGN.md, "Governance"). One credit ≈ one output token. */
export const DEFAULT_LEDGER_PARAMS: Readonly<LedgerParams> = Object.freeze({
  floorPerDay: 2_000,
  unvouchedFloorPercent: 25,
  vouchesForFullFloor: 1,
  capPerCounterpartyPerDay: 50_000,
  promptTokensPerCredit: 4,
})

export const DAY_MS = 86_400_000

/** The part of a verified op the fold reads. */
export interface FoldOp {
  cid: string
  author: string
  at: number
  facts: OpFacts
}

export function createFoldState(params: LedgerParams = DEFAULT_LEDGER_PARAMS): FoldState {
  return emptyFoldState(params)
}

/** Adds one op. Idempotent: applying an op twice changes nothing. */
export function applyOp(state: FoldState, op: FoldOp): void {
  const f = op.facts
  const d = state.derived
  switch (f.kind) {
    case 'receipt': {
      const entry = state.receipts.get(f.receipt)
      if (entry === undefined) {
        const fresh: ReceiptEntry = {
          worker: f.worker,
          requester: f.requester,
          day: Math.floor(f.created / DAY_MS),
          promptTokens: f.promptTokens,
          outputTokens: f.outputTokens,
          loggers: [op.author],
        }
        indexReceipt(state, f.receipt, fresh)
        if (d !== undefined) contribute(state, d, fresh, 1)
      } else if (!entry.loggers.includes(op.author)) {
        const before = isCarried(state, entry)
        entry.loggers.push(internLogger(state, entry, op.author))
        if (!before && d !== undefined) contribute(state, d, entry, 1)
      }
      return
    }
    case 'member-genesis':
      if (state.geneses.has(op.author)) return
      state.geneses.add(op.author)
      if (d === undefined) return
      // Its bindings and vouches start to count.
      for (const node of state.boundBy.get(op.author) ?? []) rebind(state, d, node)
      for (const member of state.vouchedBy.get(op.author) ?? []) revouch(state, d, member)
      for (const worker of state.accused.get(op.author) ?? []) refraud(state, d, worker)
      return
    case 'node-binding':
      if (indexBinding(state, f.node, { member: op.author, at: op.at, cid: op.cid }) && d !== undefined) {
        rebind(state, d, f.node)
      }
      return
    case 'vouch':
      if (indexVouch(state, f.member, op.author) && d !== undefined) revouch(state, d, f.member)
      return
    case 'fraud-proof':
      if (indexFraud(state, f.worker, op.author) && d !== undefined) refraud(state, d, f.worker)
      return
    case 'spot-check-verdict':
      // An honest or dishonest verdict alone changes no balance: only a fraud proof does.
      return
  }
}

/** Records a fork proof: every op of `author` stops counting. Idempotent. */
export function applyFork(state: FoldState, author: string): void {
  if (state.frozen.has(author)) return
  state.frozen.add(author)
  state.derived = undefined
}

export function foldOps(ops: Iterable<FoldOp>, frozen: Iterable<string>, params?: LedgerParams): FoldState {
  const state = createFoldState(params)
  for (const author of frozen) applyFork(state, author)
  for (const op of ops) applyOp(state, op)
  return state
}

export interface MemberBalance {
  member: string
  /** Credits earned as worker, after same-member and per-counterparty caps. */
  earned: number
  /** Credits of all counted receipts as requester. */
  spent: number
  /** The part of `spent` that daily floors paid for. */
  floorCovered: number
  /** earned − (spent − floorCovered); negative after spending beyond the floor with nothing earned. */
  balance: number
  floorPerDay: number
  /** What today's floor still covers; `balance + floorLeftToday` is what the member can use now. */
  floorLeftToday: number
  vouched: boolean
  frozen: boolean
}

/** The aggregates, re-derived first if stale. */
function fresh(state: FoldState): Derived {
  if (state.derived === undefined) state.derived = derive(state)
  return state.derived
}

export function memberOf(state: FoldState, node: string): string {
  return fresh(state).memberOf.get(node) ?? node
}

export function floorOf(state: FoldState, member: string): number {
  return floorFor(state.params, fresh(state).vouched.has(member))
}

export function balanceOf(state: FoldState, member: string, now = Date.now()): MemberBalance {
  const d = fresh(state)
  const t = d.members.get(member) ?? { earned: 0, spent: 0, charged: 0, spendDays: undefined }
  const vouched = d.vouched.has(member)
  const floorPerDay = floorFor(state.params, vouched)
  const spentToday = t.spendDays?.get(Math.floor(now / DAY_MS)) ?? 0
  return {
    member,
    earned: t.earned,
    spent: t.spent,
    floorCovered: t.spent - t.charged,
    balance: t.earned - t.charged,
    floorPerDay,
    floorLeftToday: Math.max(0, floorPerDay - spentToday),
    vouched,
    frozen: state.frozen.has(member),
  }
}

/** Every member that earned or spent, sorted by id: the comparable result of a fold. */
export function allBalances(state: FoldState, now = Date.now()): MemberBalance[] {
  // A member whose receipts were all taken back (a rebinding, a fraud proof) keeps a zero
  // row in the incremental aggregates but none in a cold derive: leave zero rows out.
  const members = [...fresh(state).members]
    .filter(([, t]) => t.earned !== 0 || t.spent !== 0 || t.charged !== 0)
    .map(([m]) => m)
    .sort()
  return members.map((m) => balanceOf(state, m, now))
}

/** Whether this receipt counts, and if not, why (for explanations). */
export function receiptStatus(
  state: FoldState,
  entry: ReceiptEntry,
): 'counted' | 'same-member' | 'void-worker' | 'not-carried' {
  const d = fresh(state)
  if (!isCarried(state, entry)) return 'not-carried'
  const wm = resolve(d, entry.worker)
  if (isVoidWorker(state, d, entry.worker, wm)) return 'void-worker'
  return wm === resolve(d, entry.requester) ? 'same-member' : 'counted'
}
