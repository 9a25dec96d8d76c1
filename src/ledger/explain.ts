// "Why is my balance what it is": the line items behind one member's balance, for
// `substrate credits` and the native API. Receipts are grouped the way the rules apply to
// them: earnings per (counterparty, day), because the cap applies to that group as a
// whole, and spending per day, because the floor does.

import {
  balanceOf,
  DAY_MS,
  type FoldState,
  floorOf,
  type MemberBalance,
  memberOf,
  type ReceiptEntry,
  receiptCredits,
  receiptStatus,
} from './balances.ts'

export interface EarningLine {
  day: string
  counterparty: string
  /** Credits of the receipts before the cap. */
  gross: number
  /** What counted after the per-counterparty daily cap. */
  earned: number
  receipts: string[]
}

export interface SpendingLine {
  day: string
  gross: number
  /** What the day's floor paid for. */
  floorCovered: number
  charged: number
  receipts: string[]
}

export interface ExcludedReceipt {
  receipt: string
  role: 'worker' | 'requester'
  reason: 'same-member' | 'void-worker' | 'not-carried'
}

export interface BalanceExplanation {
  balance: MemberBalance
  /** The member's nodes that appear in receipts. */
  nodes: string[]
  earnings: EarningLine[]
  spending: SpendingLine[]
  excluded: ExcludedReceipt[]
}

export function explainBalance(state: FoldState, member: string, now = Date.now()): BalanceExplanation {
  const earn = new Map<string, EarningLine>()
  const spend = new Map<string, SpendingLine>()
  const excluded: ExcludedReceipt[] = []
  const nodes = new Set<string>()
  const cap = state.params.capPerCounterpartyPerDay
  for (const [cid, entry] of state.receipts) {
    const wm = memberOf(state, entry.worker)
    const rm = memberOf(state, entry.requester)
    if (wm !== member && rm !== member) continue
    if (wm === member) nodes.add(entry.worker)
    if (rm === member) nodes.add(entry.requester)
    const status = receiptStatus(state, entry)
    if (status !== 'counted') {
      excluded.push({ receipt: cid, role: wm === member ? 'worker' : 'requester', reason: status })
      continue
    }
    const credits = creditsOf(state, entry)
    const day = dayName(entry.day)
    if (wm === member) {
      const key = `${rm}|${day}`
      const line = earn.get(key) ?? { day, counterparty: rm, gross: 0, earned: 0, receipts: [] }
      line.gross += credits
      line.earned = Math.min(cap, line.gross)
      line.receipts.push(cid)
      earn.set(key, line)
    } else {
      const line = spend.get(day) ?? { day, gross: 0, floorCovered: 0, charged: 0, receipts: [] }
      line.gross += credits
      line.receipts.push(cid)
      spend.set(day, line)
    }
  }
  const floor = floorOf(state, member)
  for (const line of spend.values()) {
    line.floorCovered = Math.min(floor, line.gross)
    line.charged = line.gross - line.floorCovered
    line.receipts.sort()
  }
  for (const line of earn.values()) line.receipts.sort()
  const byDay = <T extends { day: string }>(a: T, b: T) => (a.day < b.day ? -1 : a.day > b.day ? 1 : 0)
  return {
    balance: balanceOf(state, member, now),
    nodes: [...nodes].sort(),
    earnings: [...earn.values()].sort(byDay),
    spending: [...spend.values()].sort(byDay),
    excluded: excluded.sort((a, b) => (a.receipt < b.receipt ? -1 : 1)),
  }
}

function creditsOf(state: FoldState, entry: ReceiptEntry): number {
  return receiptCredits(entry.promptTokens, entry.outputTokens, state.params)
}

const dayName = (day: number) => new Date(day * DAY_MS).toISOString().slice(0, 10)
