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
//   - a frozen or fraud-proven worker's receipts mint nothing and cost its requesters nothing;
//   - node → member comes from node-binding ops (earliest (at, cid) wins when a node consented
//     twice) and applies to all of the node's receipts; an unbound node is its own member.
// Sums of mins and maxes over groups are order-independent, which is what makes incremental
// updates equal the cold fold. The state keeps the receipts themselves (so a later binding
// or freeze can re-derive) and derived aggregates that a receipt updates in O(1); any other
// op marks the aggregates stale and the next read re-derives them (those ops are rare).

import type { OpFacts } from './ops.ts'

export interface LedgerParams {
  /** Credits a vouched member may spend per UTC day without touching its balance. */
  floorPerDay: number
  /** The floor of a member nobody vouched for, as a percentage of `floorPerDay`. */
  unvouchedFloorPercent: number
  /** Distinct vouching members that make a member vouched. */
  vouchesForFullFloor: number
  /** Most credits a worker member earns from one requester member per UTC day. */
  capPerCounterpartyPerDay: number
  /** Prompt tokens are prefill, far cheaper than generation: this many make one credit. */
  promptTokensPerCredit: number
}

/** Defaults until governance sets them (DESIGN.md, "Governance"). One credit ≈ one output token. */
export const DEFAULT_LEDGER_PARAMS: Readonly<LedgerParams> = Object.freeze({
  floorPerDay: 2_000,
  unvouchedFloorPercent: 25,
  vouchesForFullFloor: 1,
  capPerCounterpartyPerDay: 50_000,
  promptTokensPerCredit: 4,
})

export const DAY_MS = 86_400_000

export function receiptCredits(promptTokens: number, outputTokens: number, params: LedgerParams): number {
  return outputTokens + Math.floor(promptTokens / params.promptTokensPerCredit)
}

export interface ReceiptEntry {
  worker: string
  requester: string
  /** UTC day of the countersignature. */
  day: number
  promptTokens: number
  outputTokens: number
  /** Authors whose logs carry this receipt. */
  loggers: string[]
}

interface BindingCandidate {
  member: string
  at: number
  cid: string
}

interface Totals {
  earned: number
  spent: number
  charged: number
}

interface Derived {
  memberOf: Map<string, string>
  vouched: Set<string>
  /** Workers with a fraud proof from someone outside their member. */
  voidWorkers: Set<string>
  /** `${workerMember}|${requesterMember}|${day}` → gross credits */
  pair: Map<string, number>
  /** `${requesterMember}|${day}` → gross credits */
  spend: Map<string, number>
  totals: Map<string, Totals>
}

export interface FoldState {
  readonly params: LedgerParams
  readonly frozen: Set<string>
  readonly receipts: Map<string, ReceiptEntry>
  readonly geneses: Set<string>
  /** node → bindings naming it, keyed by op cid */
  readonly bindings: Map<string, Map<string, BindingCandidate>>
  /** member → authors vouching for it */
  readonly vouches: Map<string, Set<string>>
  /** worker → authors of fraud proofs against it */
  readonly fraud: Map<string, Set<string>>
  /** Aggregates; undefined when an op other than a receipt made them stale. */
  derived: Derived | undefined
}

/** The part of a verified op the fold reads. */
export interface FoldOp {
  cid: string
  author: string
  at: number
  facts: OpFacts
}

export function createFoldState(params: LedgerParams = DEFAULT_LEDGER_PARAMS): FoldState {
  return {
    params: { ...params },
    frozen: new Set(),
    receipts: new Map(),
    geneses: new Set(),
    bindings: new Map(),
    vouches: new Map(),
    fraud: new Map(),
    derived: emptyDerived(),
  }
}

/** Adds one op. Idempotent: applying an op twice changes nothing. */
export function applyOp(state: FoldState, op: FoldOp): void {
  const f = op.facts
  switch (f.kind) {
    case 'receipt': {
      const entry = state.receipts.get(f.receipt)
      if (entry === undefined) {
        state.receipts.set(f.receipt, {
          worker: f.worker,
          requester: f.requester,
          day: Math.floor(f.created / DAY_MS),
          promptTokens: f.promptTokens,
          outputTokens: f.outputTokens,
          loggers: [op.author],
        })
        if (!state.frozen.has(op.author) && state.derived !== undefined) {
          countReceipt(state, state.derived, state.receipts.get(f.receipt)!)
        }
      } else if (!entry.loggers.includes(op.author)) {
        const before = isCarried(state, entry)
        entry.loggers.push(op.author)
        if (!before && isCarried(state, entry) && state.derived !== undefined) {
          countReceipt(state, state.derived, entry)
        }
      }
      return
    }
    case 'member-genesis':
      if (!state.geneses.has(op.author)) {
        state.geneses.add(op.author)
        state.derived = undefined
      }
      return
    case 'node-binding':
      if (addTo(state.bindings, f.node, op.cid, { member: op.author, at: op.at, cid: op.cid })) {
        state.derived = undefined
      }
      return
    case 'vouch':
      if (addToSet(state.vouches, f.member, op.author)) state.derived = undefined
      return
    case 'fraud-proof':
      if (addToSet(state.fraud, f.worker, op.author)) state.derived = undefined
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
  const t = d.totals.get(member) ?? { earned: 0, spent: 0, charged: 0 }
  const vouched = d.vouched.has(member)
  const floorPerDay = floorFor(state.params, vouched)
  const spentToday = d.spend.get(`${member}|${Math.floor(now / DAY_MS)}`) ?? 0
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
  const members = [...fresh(state).totals.keys()].sort()
  return members.map((m) => balanceOf(state, m, now))
}

/** Whether this receipt counts, and if not, why (for explanations). */
export function receiptStatus(
  state: FoldState,
  entry: ReceiptEntry,
): 'counted' | 'same-member' | 'void-worker' | 'not-carried' {
  const d = fresh(state)
  if (!isCarried(state, entry)) return 'not-carried'
  const wm = d.memberOf.get(entry.worker) ?? entry.worker
  if (isVoidWorker(state, d, entry.worker, wm)) return 'void-worker'
  const rm = d.memberOf.get(entry.requester) ?? entry.requester
  return wm === rm ? 'same-member' : 'counted'
}

function floorFor(params: LedgerParams, vouched: boolean): number {
  return vouched ? params.floorPerDay : Math.floor((params.floorPerDay * params.unvouchedFloorPercent) / 100)
}

/** A fraud-proven worker, or one whose node or member key forked, earns nothing. */
function isVoidWorker(state: FoldState, d: Derived, worker: string, workerMember: string): boolean {
  return d.voidWorkers.has(worker) || state.frozen.has(worker) || state.frozen.has(workerMember)
}

function isCarried(state: FoldState, entry: ReceiptEntry): boolean {
  return entry.loggers.some((a) => !state.frozen.has(a))
}

function emptyDerived(): Derived {
  return {
    memberOf: new Map(),
    vouched: new Set(),
    voidWorkers: new Set(),
    pair: new Map(),
    spend: new Map(),
    totals: new Map(),
  }
}

function derive(state: FoldState): Derived {
  const d = emptyDerived()
  const live = (author: string) => !state.frozen.has(author)
  const isMember = (author: string) => live(author) && state.geneses.has(author)
  for (const [node, candidates] of state.bindings) {
    let best: BindingCandidate | undefined
    for (const c of candidates.values()) {
      if (!isMember(c.member)) continue
      if (best === undefined || c.at < best.at || (c.at === best.at && c.cid < best.cid)) best = c
    }
    if (best !== undefined) d.memberOf.set(node, best.member)
  }
  const resolve = (node: string) => d.memberOf.get(node) ?? node
  for (const [member, vouchers] of state.vouches) {
    let n = 0
    for (const v of vouchers) if (isMember(v) && v !== member) n++
    if (n >= state.params.vouchesForFullFloor) d.vouched.add(member)
  }
  for (const [worker, accusers] of state.fraud) {
    for (const a of accusers) {
      if (live(a) && resolve(a) !== resolve(worker)) d.voidWorkers.add(worker)
    }
  }
  for (const entry of state.receipts.values()) {
    if (isCarried(state, entry)) countReceipt(state, d, entry)
  }
  return d
}

/** Adds a carried receipt to the aggregates; O(1). */
function countReceipt(state: FoldState, d: Derived, entry: ReceiptEntry): void {
  const wm = d.memberOf.get(entry.worker) ?? entry.worker
  if (isVoidWorker(state, d, entry.worker, wm)) return
  const rm = d.memberOf.get(entry.requester) ?? entry.requester
  if (wm === rm) return
  const p = state.params
  const credits = receiptCredits(entry.promptTokens, entry.outputTokens, p)
  const pairKey = `${wm}|${rm}|${entry.day}`
  const earnedBefore = d.pair.get(pairKey) ?? 0
  d.pair.set(pairKey, earnedBefore + credits)
  const worker = totalsOf(d, wm)
  worker.earned +=
    Math.min(p.capPerCounterpartyPerDay, earnedBefore + credits) -
    Math.min(p.capPerCounterpartyPerDay, earnedBefore)
  const spendKey = `${rm}|${entry.day}`
  const spentBefore = d.spend.get(spendKey) ?? 0
  d.spend.set(spendKey, spentBefore + credits)
  const floor = floorFor(p, d.vouched.has(rm))
  const requester = totalsOf(d, rm)
  requester.spent += credits
  requester.charged += Math.max(0, spentBefore + credits - floor) - Math.max(0, spentBefore - floor)
}

function totalsOf(d: Derived, member: string): Totals {
  let t = d.totals.get(member)
  if (t === undefined) {
    t = { earned: 0, spent: 0, charged: 0 }
    d.totals.set(member, t)
  }
  return t
}

function addTo<V>(map: Map<string, Map<string, V>>, key: string, id: string, value: V): boolean {
  let inner = map.get(key)
  if (inner === undefined) {
    inner = new Map()
    map.set(key, inner)
  }
  if (inner.has(id)) return false
  inner.set(id, value)
  return true
}

function addToSet(map: Map<string, Set<string>>, key: string, value: string): boolean {
  let inner = map.get(key)
  if (inner === undefined) {
    inner = new Set()
    map.set(key, inner)
  }
  if (inner.has(value)) return false
  inner.add(value)
  return true
}
