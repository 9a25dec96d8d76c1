// The registry of signed record types. Each type has its own domain string, which is
// prepended to the signed bytes, so a signature made for one type can never verify as
// another (a job manifest cannot be replayed as a receipt). The limits sit in the same
// row so that adding a type means writing one line, and no type can exist without them.

import { DEFAULT_MAX_CLOCK_SKEW_MS, HOUR_MS, KiB, MINUTE_MS, MiB, SECOND_MS } from './limits.ts'

export interface RecordTypeSpec {
  /** Signed in front of every record of this type; bump the trailing version to break compatibility. */
  readonly domain: string
  /** Hard limit on the encoded envelope, checked before a single byte is decoded. */
  readonly maxBytes: number
  /** How far `created` may lie in our future, and how long after `expires` we still accept. */
  readonly maxSkewMs: number
  /** Upper bound on `expires - created`; it also bounds how long a replay guard must remember a nonce. */
  readonly maxLifetimeMs: number
  /** Lifetime a signer gets when it does not ask for one. */
  readonly defaultTtlMs: number
}

export const recordTypes = {
  // A job manifest carries the prompt inline, so it is the one large record.
  job: {
    domain: 'substrate/job/1',
    maxBytes: 1 * MiB,
    maxSkewMs: DEFAULT_MAX_CLOCK_SKEW_MS,
    maxLifetimeMs: HOUR_MS,
    defaultTtlMs: 10 * MINUTE_MS,
  },
  // Hashes and counters only; room left for a nested worker envelope when countersigned.
  receipt: {
    domain: 'substrate/receipt/1',
    maxBytes: 8 * KiB,
    maxSkewMs: DEFAULT_MAX_CLOCK_SKEW_MS,
    maxLifetimeMs: 24 * HOUR_MS,
    defaultTtlMs: HOUR_MS,
  },
  // The requester's signature over a worker's receipt (nested as bytes): its own domain, so
  // a worker receipt can never pass for a countersignature or the other way round.
  'receipt-countersign': {
    domain: 'substrate/receipt-countersign/1',
    maxBytes: 16 * KiB,
    maxSkewMs: DEFAULT_MAX_CLOCK_SKEW_MS,
    maxLifetimeMs: 24 * HOUR_MS,
    defaultTtlMs: HOUR_MS,
  },
  // Gossiped every few seconds, so a stale one is worthless after a few minutes.
  capacity: {
    domain: 'substrate/capacity/1',
    maxBytes: 16 * KiB,
    maxSkewMs: DEFAULT_MAX_CLOCK_SKEW_MS,
    maxLifetimeMs: 5 * MINUTE_MS,
    defaultTtlMs: MINUTE_MS,
  },
  // May embed a countersigned receipt, hence larger than a receipt.
  'ledger-op': {
    domain: 'substrate/ledger-op/1',
    maxBytes: 32 * KiB,
    maxSkewMs: DEFAULT_MAX_CLOCK_SKEW_MS,
    maxLifetimeMs: 24 * HOUR_MS,
    defaultTtlMs: HOUR_MS,
  },
  // For tests only: small, so oversize checks are cheap to exercise.
  test: {
    domain: 'substrate/test/1',
    maxBytes: 4 * KiB,
    maxSkewMs: DEFAULT_MAX_CLOCK_SKEW_MS,
    maxLifetimeMs: HOUR_MS,
    defaultTtlMs: 30 * SECOND_MS,
  },
  // A node's consent to be bound to a member (nested in the member's node-binding ledger
  // op): without it a member could claim someone else's node and collect its earnings.
  'node-binding': {
    domain: 'substrate/node-binding/1',
    maxBytes: 1 * KiB,
    maxSkewMs: DEFAULT_MAX_CLOCK_SKEW_MS,
    maxLifetimeMs: 24 * HOUR_MS,
    defaultTtlMs: HOUR_MS,
  },
} as const satisfies Record<string, RecordTypeSpec>

export type RecordType = keyof typeof recordTypes

export function isRecordType(value: unknown): value is RecordType {
  return typeof value === 'string' && Object.hasOwn(recordTypes, value)
}

export function recordTypeSpec(type: RecordType): RecordTypeSpec {
  return recordTypes[type]
}

const encoder = new TextEncoder()
const domainBytes = new Map<RecordType, Uint8Array>(
  Object.entries(recordTypes).map(([type, spec]) => [type as RecordType, encoder.encode(spec.domain)]),
)

/** The UTF-8 domain string, cached: it is prepended to every signature we make or check. */
export function domainBytesOf(type: RecordType): Uint8Array {
  return domainBytes.get(type)!
}

// Two types sharing a domain would silently re-open cross-type replay, and a NUL inside a
// domain would break the `domain ‖ 0x00 ‖ body` framing; fail at load instead.
const domains = Object.values(recordTypes).map((s) => s.domain)
if (new Set(domains).size !== domains.length || domains.some((d) => d.includes('\0'))) {
  throw new Error('protocol/domains: domain strings must be unique and contain no NUL')
}
