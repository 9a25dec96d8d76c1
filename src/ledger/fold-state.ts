// The balance fold's state and the aggregates kept beside it (balances.ts is the API).
//
// Aggregates are sums over groups — credits per (worker member, requester member, day) and
// per (requester member, day) — and the totals are Σ min(cap, group) and
// Σ max(0, group − floor). Such totals depend only on the group sums, so a receipt can be
// added (+1) or taken back (−1) in O(1) and the result never depends on the order. That is
// how every op kind stays incremental: a node binding that moves a node to another member
// takes that node's receipts back under the old member and adds them under the new one; a
// vouch that changes a member's floor re-floors that member's days; a fraud proof takes
// the worker's receipts back. Only a fork (rare, punitive) re-derives everything.

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

export interface BindingCandidate {
  member: string
  at: number
  cid: string
}

/** One member's aggregates: everything a receipt touches on one side, behind one lookup. */
export interface MemberTotals {
  /** A small number per member, for `pairs` keys of its counterparties (order of first use). */
  readonly n: number
  earned: number
  spent: number
  charged: number
  /** As worker: (requester member n × 2^27 + day) → gross credits. */
  readonly pairs: Map<number, number>
  /** As requester: day → gross credits. */
  readonly spendDays: Map<number, number>
}

export interface Derived {
  memberOf: Map<string, string>
  vouched: Set<string>
  /** Workers with a fraud proof from a vouched member (not themselves, not frozen). */
  voidWorkers: Set<string>
  members: Map<string, MemberTotals>
}

export interface FoldState {
  readonly params: LedgerParams
  readonly frozen: Set<string>
  readonly receipts: Map<string, ReceiptEntry>
  /** node → receipts it worked or requested (each receipt once per node) */
  readonly receiptsByNode: Map<string, string[]>
  readonly geneses: Set<string>
  /** node → op cid → binding naming it */
  readonly bindings: Map<string, Map<string, BindingCandidate>>
  /** member → nodes it has bound */
  readonly boundBy: Map<string, Set<string>>
  /** member → authors vouching for it */
  readonly vouches: Map<string, Set<string>>
  /** author → members it vouched for */
  readonly vouchedBy: Map<string, Set<string>>
  /** worker → authors of fraud proofs against it */
  readonly fraud: Map<string, Set<string>>
  /** author → workers it accused */
  readonly accused: Map<string, Set<string>>
  /** One string object per peer id: a million receipts name a few thousand nodes. */
  readonly ids: Map<string, string>
  /** Aggregates; undefined after a fork, re-derived on the next read. */
  derived: Derived | undefined
}

export function emptyFoldState(params: LedgerParams): FoldState {
  return {
    params: { ...params },
    frozen: new Set(),
    receipts: new Map(),
    receiptsByNode: new Map(),
    geneses: new Set(),
    bindings: new Map(),
    boundBy: new Map(),
    vouches: new Map(),
    vouchedBy: new Map(),
    fraud: new Map(),
    accused: new Map(),
    ids: new Map(),
    derived: emptyDerived(),
  }
}

export function receiptCredits(promptTokens: number, outputTokens: number, params: LedgerParams): number {
  return outputTokens + Math.floor(promptTokens / params.promptTokensPerCredit)
}

export function floorFor(params: LedgerParams, vouched: boolean): number {
  return vouched ? params.floorPerDay : Math.floor((params.floorPerDay * params.unvouchedFloorPercent) / 100)
}

export const resolve = (d: Derived, node: string) => d.memberOf.get(node) ?? node

export function isCarried(state: FoldState, entry: ReceiptEntry): boolean {
  return state.frozen.size === 0 || entry.loggers.some((a) => !state.frozen.has(a))
}

/** A fraud-proven worker, or one whose node or member key forked, earns nothing. */
export function isVoidWorker(state: FoldState, d: Derived, worker: string, workerMember: string): boolean {
  return d.voidWorkers.has(worker) || state.frozen.has(worker) || state.frozen.has(workerMember)
}

const isLiveMember = (state: FoldState, author: string) =>
  !state.frozen.has(author) && state.geneses.has(author)

// --- indexes (state only; no aggregates) ---------------------------------------------

export function indexReceipt(state: FoldState, cid: string, entry: ReceiptEntry): void {
  const worker = intern(state, entry.worker)
  const requester = intern(state, entry.requester)
  entry.worker = worker
  entry.requester = requester
  const loggers = entry.loggers
  for (let i = 0; i < loggers.length; i++) loggers[i] = internLogger(state, entry, loggers[i]!)
  state.receipts.set(cid, entry)
  pushTo(state.receiptsByNode, worker, cid)
  if (requester !== worker) pushTo(state.receiptsByNode, requester, cid)
}

/** A receipt's logger is almost always its requester or worker: no lookup then. */
export function internLogger(state: FoldState, entry: ReceiptEntry, author: string): string {
  if (author === entry.requester) return entry.requester
  if (author === entry.worker) return entry.worker
  return intern(state, author)
}

export function intern(state: FoldState, id: string): string {
  const known = state.ids.get(id)
  if (known !== undefined) return known
  state.ids.set(id, id)
  return id
}

export function indexBinding(state: FoldState, node: string, candidate: BindingCandidate): boolean {
  let candidates = state.bindings.get(node)
  if (candidates === undefined) {
    candidates = new Map()
    state.bindings.set(node, candidates)
  }
  if (candidates.has(candidate.cid)) return false
  candidates.set(candidate.cid, candidate)
  addToSet(state.boundBy, candidate.member, node)
  return true
}

export function indexVouch(state: FoldState, member: string, voucher: string): boolean {
  if (!addToSet(state.vouches, member, voucher)) return false
  addToSet(state.vouchedBy, voucher, member)
  return true
}

// --- aggregates ----------------------------------------------------------------------

export function emptyDerived(): Derived {
  return {
    memberOf: new Map(),
    vouched: new Set(),
    voidWorkers: new Set(),
    members: new Map(),
  }
}

/** Everything from scratch: O(ops). */
export function derive(state: FoldState): Derived {
  const d = emptyDerived()
  for (const node of state.bindings.keys()) {
    const member = bindingWinner(state, node)
    if (member !== undefined) d.memberOf.set(node, member)
  }
  for (const member of state.vouches.keys()) if (isVouched(state, member)) d.vouched.add(member)
  for (const [worker, accusers] of state.fraud) {
    if (provesFraud(state, d, worker, accusers)) d.voidWorkers.add(worker)
  }
  for (const entry of state.receipts.values()) contribute(state, d, entry, 1)
  return d
}

/** Adds (sign 1) or takes back (sign −1) one receipt's effect on the aggregates; O(1). */
export function contribute(state: FoldState, d: Derived, entry: ReceiptEntry, sign: 1 | -1): void {
  if (!isCarried(state, entry)) return
  const wm = resolve(d, entry.worker)
  if (isVoidWorker(state, d, entry.worker, wm)) return
  const rm = resolve(d, entry.requester)
  if (wm === rm) return
  const p = state.params
  const credits = sign * receiptCredits(entry.promptTokens, entry.outputTokens, p)
  const worker = totalsOf(d, wm)
  const requester = totalsOf(d, rm)
  const key = requester.n * DAYS + entry.day
  const pairBefore = worker.pairs.get(key) ?? 0
  worker.pairs.set(key, pairBefore + credits)
  const cap = p.capPerCounterpartyPerDay
  worker.earned += Math.min(cap, pairBefore + credits) - Math.min(cap, pairBefore)
  const dayBefore = requester.spendDays.get(entry.day) ?? 0
  requester.spendDays.set(entry.day, dayBefore + credits)
  const floor = floorFor(p, d.vouched.has(rm))
  requester.spent += credits
  requester.charged += Math.max(0, dayBefore + credits - floor) - Math.max(0, dayBefore - floor)
}

// A day number is below 2^27 (created ≤ 2^53 ms), so member numbers below 2^26 keep every
// pair key an exact integer: a worker's pairs are one map, not a map per requester.
const DAYS = 2 ** 27

/** Re-decides which member `node` belongs to and moves its receipts if that changed. */
export function rebind(state: FoldState, d: Derived, node: string): void {
  const before = d.memberOf.get(node)
  const after = bindingWinner(state, node)
  if (before === after) return
  const receipts = state.receiptsByNode.get(node) ?? []
  for (const cid of receipts) contribute(state, d, state.receipts.get(cid)!, -1)
  if (after === undefined) d.memberOf.delete(node)
  else d.memberOf.set(node, after)
  for (const cid of receipts) contribute(state, d, state.receipts.get(cid)!, 1)
}

/** Re-decides whether `member` is vouched and re-floors its days if that changed. */
export function revouch(state: FoldState, d: Derived, member: string): void {
  const before = d.vouched.has(member)
  const after = isVouched(state, member)
  if (before === after) return
  const oldFloor = floorFor(state.params, before)
  const newFloor = floorFor(state.params, after)
  if (after) d.vouched.add(member)
  else d.vouched.delete(member)
  const t = totalsOf(d, member)
  for (const gross of t.spendDays.values()) {
    t.charged += Math.max(0, gross - newFloor) - Math.max(0, gross - oldFloor)
  }
  // Vouches only grow (a freeze re-derives everything), so this only ever adds authority.
  for (const worker of state.accused.get(member) ?? []) refraud(state, d, worker)
}

/** Voids `worker` if its fraud proofs now prove it, taking its receipts back. */
export function refraud(state: FoldState, d: Derived, worker: string): void {
  if (d.voidWorkers.has(worker) || !provesFraud(state, d, worker, state.fraud.get(worker))) return
  for (const cid of state.receiptsByNode.get(worker) ?? []) {
    const entry = state.receipts.get(cid)!
    if (entry.worker === worker) contribute(state, d, entry, -1)
  }
  d.voidWorkers.add(worker)
}

// Earliest (at, cid) among bindings by live members: a node that consented twice cannot
// make its member depend on which binding a node saw first.
function bindingWinner(state: FoldState, node: string): string | undefined {
  let best: BindingCandidate | undefined
  for (const c of state.bindings.get(node)?.values() ?? []) {
    if (!isLiveMember(state, c.member)) continue
    if (best === undefined || c.at < best.at || (c.at === best.at && c.cid < best.cid)) best = c
  }
  return best?.member
}

function isVouched(state: FoldState, member: string): boolean {
  let n = 0
  for (const v of state.vouches.get(member) ?? []) if (v !== member && isLiveMember(state, v)) n++
  return n >= state.params.vouchesForFullFloor
}

// Anyone can sign a fraud proof, and the fold cannot re-run the model to check its
// evidence, so only a vouched member's proof voids a worker: a fresh key cannot zero out a
// rival's earnings. (Re-checking the evidence by a second verifier is issue 5's next step.)
function provesFraud(
  state: FoldState,
  d: Derived,
  worker: string,
  accusers: Set<string> | undefined,
): boolean {
  for (const a of accusers ?? []) {
    if (a !== worker && isLiveMember(state, a) && d.vouched.has(a)) return true
  }
  return false
}

/** Records a fraud proof's accusation; true when it is new. */
export function indexFraud(state: FoldState, worker: string, accuser: string): boolean {
  if (!addToSet(state.fraud, worker, accuser)) return false
  addToSet(state.accused, accuser, worker)
  return true
}

function totalsOf(d: Derived, member: string): MemberTotals {
  let t = d.members.get(member)
  if (t === undefined) {
    t = { n: d.members.size, earned: 0, spent: 0, charged: 0, pairs: new Map(), spendDays: new Map() }
    d.members.set(member, t)
  }
  return t
}

function pushTo(map: Map<string, string[]>, key: string, value: string): void {
  const list = map.get(key)
  if (list === undefined) map.set(key, [value])
  else list.push(value)
}

export function addToSet(map: Map<string, Set<string>>, key: string, value: string): boolean {
  let inner = map.get(key)
  if (inner === undefined) {
    inner = new Set()
    map.set(key, inner)
  }
  if (inner.has(value)) return false
  inner.add(value)
  return true
}
