// The signed records of a mesh job (DESIGN.md, "The inference job, end to end"): the
// requester's manifest, the worker's receipt and the requester's countersignature over it.
// Verifying them needs no network, so the ledger can re-check a receipt years later.

import { createHash } from 'node:crypto'
import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import {
  cidOf,
  decodeEnvelope,
  decodeEnvelopeAs,
  type Envelope,
  encodeEnvelope,
  type ReplayGuard,
  signEnvelope,
} from '../identity/envelope.ts'
import type { Identity } from '../identity/keys.ts'
import { chatMessageSchema, samplingOptionsSchema } from '../runtime/protocol.ts'

const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/)
export const JOB_KINDS = ['infer'] as const

export const jobManifestSchema = z
  .strictObject({
    kind: z.enum(JOB_KINDS),
    /** The model's content digest: a worker runs exactly these weights or refuses. */
    model: digestSchema,
    mode: z.enum(['completion', 'chat']),
    prompt: z.string().optional(),
    messages: z.array(chatMessageSchema).max(1024).optional(),
    options: samplingOptionsSchema,
    /** Hard cap on output tokens; the worker stops there whatever `options` say. */
    maxTokens: z.number().int().min(1).max(1_000_000),
    /** Who asks; must be the envelope's signer. */
    requester: z.string(),
  })
  .refine((m) => (m.mode === 'completion' ? m.prompt !== undefined : m.messages !== undefined), {
    message: 'completion needs a prompt, chat needs messages',
  })
export type JobManifest = z.infer<typeof jobManifestSchema>

export const receiptSchema = z.strictObject({
  /** CID of the exact manifest envelope bytes the worker admitted. */
  job: z.string().max(128),
  /** Who asked; only this peer's countersignature makes the receipt count. */
  requester: z.string().max(128),
  model: digestSchema,
  /** "sha256:<hex>" of the UTF-8 output text, so a spot-checker can compare outputs. */
  outputHash: digestSchema,
  promptTokens: z.number().int().min(0),
  outputTokens: z.number().int().min(0),
  computeMs: z.number().int().min(0),
})
export type Receipt = z.infer<typeof receiptSchema>

const countersignSchema = z.strictObject({
  receipt: z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'expected bytes'),
})

/** A receipt signed by the worker and countersigned by the requester: what mints credits. */
export interface CountersignedReceipt {
  /** The countersign envelope as sent: what a ledger stores and gossips. */
  bytes: Uint8Array
  cid: string
  worker: string
  requester: string
  receipt: Receipt
  /** The worker's receipt envelope nested inside. */
  workerReceipt: Uint8Array
}

export const sha256Digest = (text: string) =>
  `sha256:${createHash('sha256').update(text, 'utf8').digest('hex')}`

// DAG-CBOR cannot encode `undefined`; optional fields must be absent, not undefined.
function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T
}

export function signManifest(
  identity: Identity,
  manifest: Omit<JobManifest, 'requester'>,
  options: { ttlMs?: number; now?: number } = {},
): { bytes: Uint8Array; cid: string; manifest: JobManifest } {
  const payload = withoutUndefined({
    ...manifest,
    options: withoutUndefined(manifest.options),
    requester: identity.id,
  })
  const bytes = encodeEnvelope(signEnvelope(identity, 'job', payload, withoutUndefined(options)))
  return { bytes, cid: cidOf(bytes), manifest: payload }
}

/**
 * A worker's admission checks on a manifest, in order: size, signature, freshness, replay
 * (inside decodeEnvelope), then that the signer is the requester it claims and the peer
 * on the other end of the stream, then the kind, then the payload's shape.
 */
export function verifyManifest(
  bytes: Uint8Array,
  remotePeer: string,
  options: { replay?: ReplayGuard; now?: number } = {},
): Envelope<JobManifest> {
  const env = decodeEnvelope(bytes, withoutUndefined({ type: 'job' as const, ...options }))
  const payload = env.payload as { requester?: unknown; kind?: unknown } | null
  if (typeof payload !== 'object' || payload === null) {
    throw new SubstrateError('E_BAD_REQUEST', 'job manifest payload is not a map')
  }
  if (payload.requester !== env.signer) {
    throw new SubstrateError(
      'E_SIGNATURE_INVALID',
      `job manifest claims requester ${String(payload.requester).slice(0, 64)} but is signed by ${env.signer}`,
    )
  }
  if (env.signer !== remotePeer) {
    throw new SubstrateError(
      'E_SIGNATURE_INVALID',
      `job manifest signed by ${env.signer} was sent by ${remotePeer}`,
    )
  }
  if (!(JOB_KINDS as readonly unknown[]).includes(payload.kind)) {
    throw new SubstrateError('E_UNKNOWN_JOB_KIND', `unknown job kind ${String(payload.kind).slice(0, 32)}`, {
      hint: 'the requester may run a newer release',
    })
  }
  const parsed = jobManifestSchema.safeParse(env.payload)
  if (!parsed.success) {
    throw new SubstrateError('E_BAD_REQUEST', `job manifest: ${parsed.error.issues[0]?.message ?? 'invalid'}`)
  }
  return { ...env, payload: parsed.data }
}

export function signReceipt(identity: Identity, receipt: Receipt): Uint8Array {
  return encodeEnvelope(signEnvelope(identity, 'receipt', receipt))
}

/** The requester's check of a worker's receipt before it countersigns. */
export function verifyWorkerReceipt(
  bytes: Uint8Array,
  expect: {
    worker: string
    requester: string
    job: string
    model: string
    output: string
    maxTokens: number
  },
): Envelope<Receipt> {
  let env: Envelope<Receipt>
  try {
    env = decodeEnvelopeAs(bytes, { type: 'receipt' }, receiptSchema)
  } catch (cause) {
    throw new SubstrateError('E_RECEIPT_INVALID', `worker receipt does not verify: ${String(cause)}`, {
      cause,
    })
  }
  const r = env.payload
  const problem =
    env.signer !== expect.worker
      ? `signed by ${env.signer}, not the worker ${expect.worker}`
      : r.job !== expect.job
        ? `names job ${r.job}, not ${expect.job}`
        : r.requester !== expect.requester
          ? `names requester ${r.requester}, not ${expect.requester}`
          : r.model !== expect.model
            ? `names model ${r.model}, not ${expect.model}`
            : r.outputHash !== sha256Digest(expect.output)
              ? 'output hash does not match the tokens received'
              : r.outputTokens > expect.maxTokens
                ? `claims ${r.outputTokens} output tokens over the cap of ${expect.maxTokens}`
                : undefined
  if (problem !== undefined) throw new SubstrateError('E_RECEIPT_INVALID', `worker receipt ${problem}`)
  return env
}

export function countersignReceipt(identity: Identity, workerReceipt: Uint8Array): Uint8Array {
  return encodeEnvelope(signEnvelope(identity, 'receipt-countersign', { receipt: workerReceipt }))
}

/**
 * Verifies both signatures of a countersigned receipt. The inner receipt is judged at the
 * moment it was countersigned, so a receipt stays verifiable after it would have expired;
 * pass `now` to judge the outer envelope at another time (the ledger does).
 */
export function verifyCountersignedReceipt(bytes: Uint8Array, now?: number): CountersignedReceipt {
  try {
    const outer = decodeEnvelopeAs(
      bytes,
      withoutUndefined({ type: 'receipt-countersign' as const, now }),
      countersignSchema,
    )
    const inner = decodeEnvelopeAs(
      outer.payload.receipt,
      { type: 'receipt', now: outer.created },
      receiptSchema,
    )
    if (inner.payload.requester !== outer.signer) {
      throw new Error(
        `countersigned by ${outer.signer}, but the job's requester is ${inner.payload.requester}`,
      )
    }
    return {
      bytes,
      cid: cidOf(bytes),
      worker: inner.signer,
      requester: outer.signer,
      receipt: inner.payload,
      workerReceipt: outer.payload.receipt,
    }
  } catch (cause) {
    throw new SubstrateError('E_RECEIPT_INVALID', `countersigned receipt does not verify: ${String(cause)}`, {
      cause,
    })
  }
}
