// Ledger ops: the signed entries of each author's hash-chained log (DESIGN.md, "Credits
// ledger"). An op is a `ledger-op` envelope whose payload is `{seq, prev, kind, body}`; its
// author is the envelope's signer and its time (`at`) the envelope's `created`.
//
// Ops are permanent history, so they are NOT checked like live messages: decodeEnvelope
// refuses expired records and replays, but an op signed a year ago and arriving now by sync
// is as valid as it was then, and the same op arriving twice is a duplicate, not an attack
// (the log makes duplicates no-ops by CID). `decodeOp` therefore checks size, canonical
// encoding, domain, signature and "not from the future" against our clock, and judges
// expiry only at the op's own time, where it can never fail for an honestly signed op.
// Nested records (a countersigned receipt, a node's binding consent) are judged at the
// moment the op claims they were logged: the author commits to having logged them while
// they were fresh, and that claim is signed.

import * as dagCbor from '@ipld/dag-cbor'
import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import {
  cidOf,
  decodeEnvelope,
  decodeEnvelopeAs,
  encodeEnvelope,
  signEnvelope,
} from '../identity/envelope.ts'
import { type Identity, publicKeyFromId } from '../identity/keys.ts'
import { verifyCountersignedReceipt } from '../mesh/job-records.ts'
import { recordTypeSpec } from '../protocol/domains.ts'
import { peekEnvelopeTimes } from './envelope-times.ts'
import { LedgerError } from './ledger-error.ts'

export const OP_KINDS = [
  'member-genesis',
  'node-binding',
  'receipt',
  'spot-check-verdict',
  'fraud-proof',
  'vouch',
] as const
export type OpKind = (typeof OP_KINDS)[number]

/** The most output positions a spot check compares, and the most candidates kept per position. */
export const MAX_EVIDENCE_POSITIONS = 64
export const MAX_TOP_K = 16

const bytesSchema = z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'expected bytes')
const peerIdSchema = z.string().refine((id) => {
  try {
    publicKeyFromId(id)
    return true
  } catch {
    return false
  }
}, 'not an Ed25519 peer id')
const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/)
const cidSchema = z.string().min(1).max(128)

export const positionEvidenceSchema = z.strictObject({
  /** Index into the claimed output tokens. */
  position: z.number().int().min(0),
  /** The token the worker claims it produced there. */
  claimed: z.number().int().min(0),
  /** The verifier's probability of the claimed token (0 when it was not among its candidates). */
  claimedProb: z.number().min(0).max(1),
  /** The verifier's most likely tokens there, best first. */
  topK: z
    .array(z.strictObject({ token: z.number().int().min(0), prob: z.number().min(0).max(1) }))
    .max(MAX_TOP_K),
})
export type PositionEvidence = z.infer<typeof positionEvidenceSchema>

export const opBodySchemas = {
  'member-genesis': z.strictObject({ name: z.string().max(64).optional() }),
  /** `consent` is a `node-binding` envelope signed by the node, naming this op's author. */
  'node-binding': z.strictObject({ consent: bytesSchema }),
  /** `receipt` is the countersigned receipt exactly as mesh/job-records makes it. */
  receipt: z.strictObject({ receipt: bytesSchema }),
  'spot-check-verdict': z.strictObject({
    receipt: cidSchema,
    worker: peerIdSchema,
    model: digestSchema,
    honest: z.boolean(),
    sampled: z.number().int().min(0),
    implausible: z.number().int().min(0),
  }),
  /** Embeds the receipt itself, so the accused worker is proven by signatures, not asserted. */
  'fraud-proof': z.strictObject({
    receipt: bytesSchema,
    evidence: z.array(positionEvidenceSchema).max(MAX_EVIDENCE_POSITIONS),
  }),
  vouch: z.strictObject({ member: peerIdSchema }),
} as const satisfies Record<OpKind, z.ZodType>

export type OpBody<K extends OpKind> = z.infer<(typeof opBodySchemas)[K]>
export type OpDraft = { [K in OpKind]: { kind: K; body: OpBody<K> } }[OpKind]

/** What the balance fold needs from an op: derived once at ingest, stored beside the bytes. */
export type OpFacts =
  | { kind: 'member-genesis' }
  | { kind: 'node-binding'; node: string }
  | {
      kind: 'receipt'
      receipt: string
      worker: string
      requester: string
      promptTokens: number
      outputTokens: number
      /** When the requester countersigned: the receipt's own time, whoever logs it. */
      created: number
    }
  | { kind: 'spot-check-verdict'; receipt: string; worker: string; honest: boolean }
  | { kind: 'fraud-proof'; receipt: string; worker: string }
  | { kind: 'vouch'; member: string }

/** A verified op. */
export interface LedgerOp {
  cid: string
  bytes: Uint8Array
  author: string
  /** 1 for an author's first op. */
  seq: number
  /** CID of the author's op at seq - 1; null at seq 1. */
  prev: string | null
  kind: OpKind
  /** Unix ms, signed by the author. */
  at: number
  facts: OpFacts
}

const payloadSchema = z.strictObject({
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  prev: cidSchema.nullable(),
  kind: z.enum(OP_KINDS),
  body: z.unknown(),
})

const consentSchema = z.strictObject({ member: z.string().max(128) })

/** Signs the next op of `identity`'s log. The caller supplies seq and prev (see log.ts `append`). */
export function signOp(
  identity: Identity,
  op: OpDraft & { seq: number; prev: string | null },
  options: { now?: number; receipts?: VerifiedReceiptCache } = {},
): LedgerOp {
  const now = options.now ?? Date.now()
  return decodeOp(signOpBytes(identity, op, { now }), { ...options, now })
}

/** Signs an op without checking its body: for tests that must build ops a peer would refuse. */
export function signOpBytes(
  identity: Identity,
  op: { seq: number; prev: string | null; kind: OpKind; body: object },
  options: { now?: number } = {},
): Uint8Array {
  const payload = { seq: op.seq, prev: op.prev, kind: op.kind, body: withoutUndefined(op.body) }
  return encodeEnvelope(signEnvelope(identity, 'ledger-op', payload, { now: options.now ?? Date.now() }))
}

/** The node's consent to be bound to `member`, to embed in the member's node-binding op. */
export function signBindingConsent(
  node: Identity,
  member: string,
  options: { now?: number } = {},
): Uint8Array {
  return encodeEnvelope(signEnvelope(node, 'node-binding', { member }, withoutUndefined(options)))
}

export interface DecodeOpOptions {
  /** Our clock, for the future-dated check only. */
  now?: number
  /** Receipts already verified here (see createVerifiedReceiptCache). */
  receipts?: VerifiedReceiptCache
}

/** What verifying a countersigned receipt established, kept by the receipt's CID. */
export interface VerifiedReceipt {
  cid: string
  worker: string
  requester: string
  promptTokens: number
  outputTokens: number
  /** The countersignature's created and expires: the only time-dependent part of the check. */
  created: number
  expires: number
}

export interface VerifiedReceiptCache {
  get(cid: string): VerifiedReceipt | undefined
  set(receipt: VerifiedReceipt): void
}

/**
 * Most receipts reach a ledger twice, in the worker's log and in the requester's. The bytes
 * are identical (same CID), so both signatures verify identically; only the window between
 * the countersignature's times and the logging op's time differs, and that is re-checked
 * on every hit. Bounded: the oldest entry goes first.
 */
export function createVerifiedReceiptCache(maxEntries = 65_536): VerifiedReceiptCache {
  const entries = new Map<string, VerifiedReceipt>()
  return {
    get: (cid) => entries.get(cid),
    set(receipt) {
      if (entries.size >= maxEntries) {
        const oldest = entries.keys().next().value
        if (oldest !== undefined) entries.delete(oldest)
      }
      entries.set(receipt.cid, receipt)
    },
  }
}

/** Verifies an op from anywhere (sync, gossip, disk) and derives its facts. Throws LedgerError. */
export function decodeOp(bytes: Uint8Array, options: DecodeOpOptions = {}): LedgerOp {
  const spec = recordTypeSpec('ledger-op')
  if (bytes.length > spec.maxBytes) {
    throw new LedgerError('oversize', `a ledger op of ${bytes.length} bytes exceeds ${spec.maxBytes}`)
  }
  const at = createdOf(bytes)
  const now = options.now ?? Date.now()
  if (at > now + spec.maxSkewMs) {
    throw new LedgerError('future', `ledger op is dated ${at - now} ms in the future`, {
      hint: "check this machine's clock (NTP), or the author's",
    })
  }
  let env: ReturnType<typeof decodeEnvelope>
  try {
    // Judged at its own time: see the comment at the top of this file.
    env = decodeEnvelope(bytes, { type: 'ledger-op', now: at })
  } catch (cause) {
    const forged = cause instanceof SubstrateError && cause.code === 'E_SIGNATURE_INVALID'
    throw new LedgerError(forged ? 'forged' : 'malformed', `ledger op: ${messageOf(cause)}`, { cause })
  }
  const parsed = payloadSchema.safeParse(env.payload)
  if (!parsed.success) throw new LedgerError('malformed', `ledger op payload: ${firstIssue(parsed.error)}`)
  const { seq, prev, kind, body } = parsed.data
  if ((seq === 1) !== (prev === null)) {
    throw new LedgerError(
      'chain',
      `ledger op ${seq} of ${env.signer} must ${seq === 1 ? 'not ' : ''}name a prev`,
    )
  }
  const facts = factsOf(kind, body, env.signer, at, options.receipts)
  return { cid: cidOf(bytes), bytes, author: env.signer, seq, prev, kind, at, facts }
}

function factsOf(
  kind: OpKind,
  rawBody: unknown,
  author: string,
  at: number,
  cache: VerifiedReceiptCache | undefined,
): OpFacts {
  const parsed = opBodySchemas[kind].safeParse(rawBody)
  if (!parsed.success) throw new LedgerError('malformed', `${kind} op body: ${firstIssue(parsed.error)}`)
  const body = parsed.data
  switch (kind) {
    case 'member-genesis':
      return { kind }
    case 'node-binding': {
      const { consent } = body as OpBody<'node-binding'>
      let node: string
      try {
        const env = decodeEnvelopeAs(consent, { type: 'node-binding', now: at }, consentSchema)
        if (env.payload.member !== author) throw new Error(`consent names ${env.payload.member.slice(0, 64)}`)
        node = env.signer
      } catch (cause) {
        throw new LedgerError('binding', `node-binding op of ${author}: ${messageOf(cause)}`, { cause })
      }
      return { kind, node }
    }
    case 'receipt': {
      const receipt = verifiedReceipt((body as OpBody<'receipt'>).receipt, at, cache)
      if (author !== receipt.worker && author !== receipt.requester) {
        throw new LedgerError('receipt', `${author} logged a receipt between two other nodes`)
      }
      return {
        kind,
        receipt: receipt.cid,
        worker: receipt.worker,
        requester: receipt.requester,
        promptTokens: receipt.promptTokens,
        outputTokens: receipt.outputTokens,
        created: receipt.created,
      }
    }
    case 'spot-check-verdict': {
      const { receipt, worker, honest } = body as OpBody<'spot-check-verdict'>
      return { kind, receipt, worker, honest }
    }
    case 'fraud-proof': {
      const bytes = (body as OpBody<'fraud-proof'>).receipt
      // The receipt is old by the time it is proven false: judge it at its own time.
      const receipt = verifiedReceipt(bytes, createdOf(bytes), cache)
      return { kind, receipt: receipt.cid, worker: receipt.worker }
    }
    case 'vouch': {
      const { member } = body as OpBody<'vouch'>
      return { kind, member }
    }
  }
}

function verifiedReceipt(
  bytes: Uint8Array,
  at: number,
  cache: VerifiedReceiptCache | undefined,
): VerifiedReceipt {
  const cid = cache === undefined ? undefined : cidOf(bytes)
  const known = cid === undefined ? undefined : cache?.get(cid)
  if (known !== undefined) {
    const skew = recordTypeSpec('receipt-countersign').maxSkewMs
    if (known.created > at + skew)
      throw new LedgerError('receipt', 'receipt is dated after the op that logs it')
    if (at - skew >= known.expires) throw new LedgerError('receipt', 'receipt had expired when it was logged')
    return known
  }
  try {
    const r = verifyCountersignedReceipt(bytes, at)
    const { created, expires } = envelopeTimes(bytes)
    const verified: VerifiedReceipt = {
      cid: r.cid,
      worker: r.worker,
      requester: r.requester,
      promptTokens: r.receipt.promptTokens,
      outputTokens: r.receipt.outputTokens,
      created,
      expires,
    }
    cache?.set(verified)
    return verified
  } catch (cause) {
    throw new LedgerError('receipt', messageOf(cause), { cause })
  }
}

/** The `created` of an encoded envelope, read without verifying anything. */
export function createdOf(bytes: Uint8Array): number {
  return envelopeTimes(bytes).created
}

function envelopeTimes(bytes: Uint8Array): { created: number; expires: number } {
  const peeked = peekEnvelopeTimes(bytes)
  if (peeked !== undefined) return peeked
  let decoded: unknown
  try {
    decoded = dagCbor.decode(bytes)
  } catch (cause) {
    throw new LedgerError('malformed', `not DAG-CBOR (${messageOf(cause)})`, { cause })
  }
  const { created, expires } = (decoded ?? {}) as { created?: unknown; expires?: unknown }
  if (typeof created !== 'number' || !Number.isSafeInteger(created) || created < 0) {
    throw new LedgerError('malformed', 'envelope has no valid created time')
  }
  return { created, expires: typeof expires === 'number' ? expires : created }
}

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T
}

const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err))
const firstIssue = (err: z.ZodError) => {
  const issue = err.issues[0]
  return issue === undefined ? 'invalid' : `${issue.path.join('.') || '(root)'}: ${issue.message}`
}
