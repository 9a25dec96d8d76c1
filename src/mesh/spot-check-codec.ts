// Frames and checks of `/substrate/spot-check/1` (DESIGN.md, step 8): the requester of a
// sampled receipt sends the checker the receipt, the manifest it signed and the output it
// received; the checker answers with its signed verdict op (and a fraud-proof op when the
// worker lied) or a typed refusal. Framing is job-codec.ts's: varint-length-prefixed
// DAG-CBOR maps tagged `t`, bounded in size before the body is buffered, read with deadlines.

import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import { cidOf, decodeEnvelope, decodeEnvelopeAs, type Envelope } from '../identity/envelope.ts'
import { peekEnvelopeTimes } from '../ledger/envelope-times.ts'
import { decodeOp, type LedgerOp, opBodySchemas } from '../ledger/ops.ts'
import { recordTypes } from '../protocol/domains.ts'
import { KiB } from '../protocol/limits.ts'
import {
  type CountersignedReceipt,
  type JobManifest,
  jobManifestSchema,
  sha256Digest,
  verifyCountersignedReceipt,
} from './job-records.ts'

export const SPOT_CHECK_PROTOCOL = '/substrate/spot-check/1'

/** The most output text a check carries: beyond this a requester cannot ask (and need not). */
export const MAX_CHECK_OUTPUT_CHARS = 256 * KiB
/** Receipt + manifest + output (≤ 4 UTF-8 bytes a character) + the frame's own fields. */
export const MAX_CHECK_REQUEST_BYTES =
  recordTypes['receipt-countersign'].maxBytes +
  recordTypes.job.maxBytes +
  4 * MAX_CHECK_OUTPUT_CHARS +
  1 * KiB
/** Two ledger ops (a verdict and a fraud proof) and room for the frame. */
export const MAX_CHECK_REPLY_BYTES = 2 * recordTypes['ledger-op'].maxBytes + 1 * KiB

const bytesSchema = z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'expected bytes')
const errorFields = { code: z.string().max(64), message: z.string().max(1024) }

export const checkRequestSchema = z.discriminatedUnion('t', [
  z.strictObject({
    t: z.literal('check'),
    receipt: bytesSchema,
    manifest: bytesSchema,
    output: z.string().max(MAX_CHECK_OUTPUT_CHARS),
  }),
])
export type CheckRequestFrame = z.infer<typeof checkRequestSchema>

export const checkReplySchema = z.discriminatedUnion('t', [
  z.strictObject({ t: z.literal('refuse'), ...errorFields }),
  z.strictObject({ t: z.literal('verdict'), verdict: bytesSchema, proof: bytesSchema.optional() }),
])
export type CheckReplyFrame = z.infer<typeof checkReplySchema>

/** What a checker has established about a request before it runs the model. */
export interface CheckableJob {
  receipt: CountersignedReceipt
  manifest: JobManifest
  output: string
}

/**
 * The checker's admission of a request, cheapest first: the receipt's two signatures, that the
 * peer asking is the job's requester (the only node that legitimately holds the prompt), that
 * we are a third party, that the manifest is the one the worker signed for (its CID is the
 * receipt's `job`) and signed by the requester, and that the output is the one the receipt
 * hashes. Records are judged at their own time: a check may come a while after the job.
 */
export function admitCheck(frame: CheckRequestFrame, remotePeer: string, self: string): CheckableJob {
  const created = (bytes: Uint8Array, what: string) => {
    const times = peekEnvelopeTimes(bytes)
    if (times === undefined) throw new SubstrateError('E_BAD_REQUEST', `the ${what} is not an envelope`)
    return times.created
  }
  const receipt = verifyCountersignedReceipt(frame.receipt, created(frame.receipt, 'receipt'))
  if (receipt.requester !== remotePeer) {
    throw new SubstrateError(
      'E_SIGNATURE_INVALID',
      `only the job's requester ${receipt.requester} may ask for its check, not ${remotePeer}`,
    )
  }
  if (receipt.worker === self) {
    throw new SubstrateError('E_BAD_REQUEST', 'a worker does not check its own receipt')
  }
  if (cidOf(frame.manifest) !== receipt.receipt.job) {
    throw new SubstrateError('E_RECEIPT_INVALID', "the manifest is not the one the receipt's worker admitted")
  }
  let manifest: Envelope<JobManifest>
  try {
    manifest = decodeEnvelopeAs(
      frame.manifest,
      { type: 'job', now: created(frame.manifest, 'manifest') },
      jobManifestSchema,
    )
  } catch (cause) {
    throw new SubstrateError('E_RECEIPT_INVALID', `the job manifest does not verify: ${String(cause)}`, {
      cause,
    })
  }
  if (manifest.signer !== receipt.requester || manifest.payload.model !== receipt.receipt.model) {
    throw new SubstrateError(
      'E_RECEIPT_INVALID',
      'the manifest and the receipt disagree on requester or model',
    )
  }
  if (sha256Digest(frame.output) !== receipt.receipt.outputHash) {
    throw new SubstrateError('E_RECEIPT_INVALID', "the output does not hash to the receipt's outputHash")
  }
  return { receipt, manifest: manifest.payload, output: frame.output }
}

export interface VerdictOps {
  verdict: LedgerOp
  proof?: LedgerOp
  honest: boolean
  /** Positions compared, and how many of them were implausible. */
  sampled: number
  implausible: number
}

/** The requester's check of a checker's answer: signed by the checker, about this receipt. */
export function verifyVerdictOps(
  reply: Extract<CheckReplyFrame, { t: 'verdict' }>,
  checker: string,
  receiptCid: string,
): VerdictOps {
  const decode = (bytes: Uint8Array) => {
    try {
      return decodeOp(bytes)
    } catch (cause) {
      throw new SubstrateError('E_PROTOCOL', `the checker's op does not verify: ${String(cause)}`, { cause })
    }
  }
  const verdict = decode(reply.verdict)
  const facts = verdict.facts
  if (verdict.author !== checker || facts.kind !== 'spot-check-verdict' || facts.receipt !== receiptCid) {
    throw new SubstrateError('E_PROTOCOL', `checker ${checker} answered with an op that is not its verdict`)
  }
  // decodeOp verified the op and its body; read the counts the facts leave out.
  const payload = decodeEnvelope(reply.verdict, { type: 'ledger-op', now: verdict.at }).payload as {
    body: unknown
  }
  const { sampled, implausible } = opBodySchemas['spot-check-verdict'].parse(payload.body)
  if (reply.proof === undefined) {
    if (!facts.honest)
      throw new SubstrateError('E_PROTOCOL', 'the checker found a lie but sent no fraud proof')
    return { verdict, honest: true, sampled, implausible }
  }
  const proof = decode(reply.proof)
  if (proof.author !== checker || proof.facts.kind !== 'fraud-proof' || proof.facts.receipt !== receiptCid) {
    throw new SubstrateError('E_PROTOCOL', `checker ${checker} sent a fraud proof about another receipt`)
  }
  if (facts.honest) throw new SubstrateError('E_PROTOCOL', 'the checker found no lie but sent a fraud proof')
  return { verdict, proof, honest: false, sampled, implausible }
}
