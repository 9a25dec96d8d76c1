// The receipts one author logged, newest first: what `/substrate/v1/receipts` shows. The
// ledger's own log is the record of every job this node ran or asked for, so nothing else
// keeps receipts.

import { decodeEnvelope } from '../identity/envelope.ts'
import { type CountersignedReceipt, verifyCountersignedReceipt } from '../mesh/job-records.ts'
import type { Db } from '../store/database.ts'
import { getLedgerHead, listLedgerOpsOf } from '../store/ledger-table.ts'

export interface LoggedReceipt {
  /** CID of the op that logged it. */
  op: string
  /** When it was logged (Unix ms). */
  at: number
  receipt: CountersignedReceipt
}

const PAGE = 256

/** The last `limit` receipts in `author`'s log, newest first. Reads pages back from the head. */
export function receiptsLoggedBy(db: Db, author: string, limit: number): LoggedReceipt[] {
  const out: LoggedReceipt[] = []
  let to = getLedgerHead(db, author)?.seq ?? 0
  while (to > 0 && out.length < limit) {
    const from = Math.max(1, to - PAGE + 1)
    const rows = listLedgerOpsOf(db, author, from, to)
    for (let i = rows.length - 1; i >= 0 && out.length < limit; i--) {
      const row = rows[i]!
      if (row.kind !== 'receipt') continue
      // Verified when it was stored; decoding again at its own time cannot fail for a stored op.
      const env = decodeEnvelope(row.bytes, { type: 'ledger-op', now: row.at })
      const body = (env.payload as { body: { receipt: Uint8Array } }).body
      out.push({ op: row.cid, at: row.at, receipt: verifyCountersignedReceipt(body.receipt, row.at) })
    }
    to = from - 1
  }
  return out
}
