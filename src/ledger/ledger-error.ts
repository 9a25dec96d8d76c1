// Why the ledger refused an op. Every refusal is a SubstrateError with a stable code (so the
// API and CLI map it like any other), plus a `reason` the sync layer acts on: a `gap` says
// which sequence numbers to pull, a `frozen` author is not worth pulling from at all.

import { type ErrorCode, SubstrateError } from '../errors.ts'

export type LedgerRefusal =
  | 'oversize'
  | 'malformed'
  | 'forged'
  | 'future'
  | 'receipt'
  | 'binding'
  | 'chain'
  | 'gap'
  | 'frozen'

const codes: Record<LedgerRefusal, ErrorCode> = {
  oversize: 'E_RECORD_TOO_LARGE',
  malformed: 'E_BAD_REQUEST',
  forged: 'E_SIGNATURE_INVALID',
  future: 'E_RECORD_FUTURE',
  receipt: 'E_RECEIPT_INVALID',
  binding: 'E_SIGNATURE_INVALID',
  chain: 'E_BAD_REQUEST',
  gap: 'E_BAD_REQUEST',
  frozen: 'E_BAD_REQUEST',
}

/** What is missing when an op arrives ahead of its predecessors: pull `from..to` of `author`. */
export interface MissingRange {
  author: string
  from: number
  to: number
}

export class LedgerError extends SubstrateError {
  override readonly name: string = 'LedgerError'
  readonly reason: LedgerRefusal
  /** Set for `gap` only. */
  readonly missing: MissingRange | undefined

  constructor(
    reason: LedgerRefusal,
    message: string,
    options: { hint?: string; cause?: unknown; missing?: MissingRange } = {},
  ) {
    super(codes[reason], message, options)
    this.reason = reason
    this.missing = options.missing
  }
}

export function isLedgerError(err: unknown, reason?: LedgerRefusal): err is LedgerError {
  return err instanceof LedgerError && (reason === undefined || err.reason === reason)
}
