// Which receipts are spot-checked and at which output positions (DESIGN.md, step 8). Pure
// and dependency-free, so that the runner process (which picks positions once it knows how
// many tokens the claimed output has) and every ledger node get the same answers from the
// receipt's CID alone. The CID covers the requester's countersignature and its random nonce,
// so a worker cannot know when signing whether, or where, it will be checked.

import { createHash } from 'node:crypto'

/** Whether the receipt with this CID is checked at `rate` (0..1). */
export function isSampledForCheck(receiptCid: string, rate: number): boolean {
  if (!(rate > 0)) return false
  if (rate >= 1) return true
  return unitFromHash('substrate/spot-check/1', receiptCid, 0) < rate
}

/** Up to `count` distinct positions in [0, outputTokens), sorted, derived from the receipt CID. */
export function pickCheckPositions(receiptCid: string, outputTokens: number, count: number): number[] {
  const n = Math.max(0, Math.min(count, outputTokens))
  if (n === 0) return []
  if (n === outputTokens) return Array.from({ length: n }, (_, i) => i)
  const picked = new Set<number>()
  for (let i = 0; picked.size < n; i++) {
    picked.add(Math.floor(unitFromHash('substrate/spot-check-position/1', receiptCid, i) * outputTokens))
  }
  return [...picked].sort((a, b) => a - b)
}

function unitFromHash(domain: string, cid: string, counter: number): number {
  const h = createHash('sha256').update(domain).update('\0').update(cid).update(`\0${counter}`).digest()
  // 48 bits: exact in a double, and far finer than any rate anyone will set.
  return h.readUIntBE(0, 6) / 2 ** 48
}
