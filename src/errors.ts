// Every error a user can see is a SubstrateError with a stable code. One table maps each
// code to an HTTP status and a CLI exit code, so the daemon, the API client and the CLI
// agree on what went wrong without string matching.

export const errorTable = {
  E_BAD_REQUEST: { status: 400, exit: 2 },
  E_INVALID_JSON: { status: 400, exit: 2 },
  E_INVALID_UTF8: { status: 400, exit: 2 },
  E_INVALID_ARGUMENT: { status: 400, exit: 2 },
  E_UNAUTHORIZED: { status: 401, exit: 3 },
  E_MODEL_NOT_FOUND: { status: 404, exit: 4 },
  E_NOT_FOUND: { status: 404, exit: 4 },
  E_PAYLOAD_TOO_LARGE: { status: 413, exit: 2 },
  E_CONTEXT_OVERFLOW: { status: 400, exit: 2 },
  E_INVALID_MODEL_FILE: { status: 422, exit: 5 },
  E_CHECKSUM_MISMATCH: { status: 422, exit: 5 },
  E_INSUFFICIENT_MEMORY: { status: 507, exit: 6 },
  E_DISK_FULL: { status: 507, exit: 6 },
  E_QUOTA_EXCEEDED: { status: 507, exit: 6 },
  E_POLICY_DENIED: { status: 403, exit: 3 },
  E_SIGNATURE_INVALID: { status: 400, exit: 7 },
  E_RECORD_EXPIRED: { status: 400, exit: 7 },
  E_RECORD_FUTURE: { status: 400, exit: 7 },
  E_REPLAY: { status: 409, exit: 7 },
  E_RECORD_TOO_LARGE: { status: 413, exit: 7 },
  E_UNKNOWN_VERSION: { status: 400, exit: 7 },
  E_ALREADY_RUNNING: { status: 409, exit: 8 },
  E_DAEMON_UNREACHABLE: { status: 503, exit: 9 },
  E_RUNNER_CRASHED: { status: 500, exit: 10 },
  E_RUNNER_START: { status: 500, exit: 10 },
  E_CANCELLED: { status: 499, exit: 130 },
  E_DOWNLOAD_FAILED: { status: 502, exit: 11 },
  E_CONFIG: { status: 500, exit: 12 },
  E_SANDBOX_UNAVAILABLE: { status: 503, exit: 13 },
  E_ENGINE_UNAVAILABLE: { status: 503, exit: 10 },
  E_ENGINE_BUILD: { status: 500, exit: 10 },
  E_UNKNOWN_JOB_KIND: { status: 400, exit: 14 },
  E_WORKER_BUSY: { status: 503, exit: 14 },
  E_PROTOCOL: { status: 502, exit: 14 },
  E_PEER_TIMEOUT: { status: 504, exit: 14 },
  E_PEER_GONE: { status: 502, exit: 14 },
  E_RECEIPT_INVALID: { status: 502, exit: 14 },
  E_LEDGER_BAD_MEMBER: { status: 400, exit: 15 },
  E_LEDGER_BAD_QUERY: { status: 400, exit: 15 },
  E_LEDGER_INCONSISTENT: { status: 500, exit: 15 },
  /** This node's member is frozen by a fork proof: nothing it signs counts, so it signs nothing. */
  E_LEDGER_FROZEN: { status: 409, exit: 15 },
  /** This member already vouched for that member: a second vouch would change nothing. */
  E_LEDGER_ALREADY_VOUCHED: { status: 409, exit: 15 },
  /** A ledger sync session reached its cap on ops, bytes or time (the rest comes next session). */
  E_LEDGER_SYNC_LIMIT: { status: 502, exit: 14 },
  /** A ledger sync peer sent ops no honest peer holds (forged, broken chain, malformed). */
  E_LEDGER_SYNC_BAD_PEER: { status: 502, exit: 14 },
  /** The peer serves as many ledger syncs as it will right now. */
  E_LEDGER_SYNC_BUSY: { status: 503, exit: 14 },
  E_INTERNAL: { status: 500, exit: 1 },
} as const satisfies Record<string, { status: number; exit: number }>

export type ErrorCode = keyof typeof errorTable

export class SubstrateError extends Error {
  override readonly name: string = 'SubstrateError'
  readonly code: ErrorCode
  /** Optional hint: what the user can do about it. */
  readonly hint: string | undefined

  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.hint = options.hint
  }

  get status(): number {
    return errorTable[this.code].status
  }

  get exitCode(): number {
    return errorTable[this.code].exit
  }

  toJSON(): { error: string; code: ErrorCode; hint?: string } {
    return this.hint === undefined
      ? { error: this.message, code: this.code }
      : { error: this.message, code: this.code, hint: this.hint }
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(errorTable, value)
}

/** Wraps anything thrown into a SubstrateError, keeping typed ones as they are. */
export function toSubstrateError(err: unknown): SubstrateError {
  if (err instanceof SubstrateError) return err
  const code = (err as { code?: unknown } | null)?.code
  if (code === 'ENOSPC') return new SubstrateError('E_DISK_FULL', 'the disk is full', { cause: err })
  const message = err instanceof Error ? err.message : String(err)
  return new SubstrateError('E_INTERNAL', message, { cause: err })
}
