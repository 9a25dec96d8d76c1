// Spot checks of receipts (DESIGN.md, step 8). A sampled share of countersigned receipts is
// re-checked by a third node: it runs the prompt plus the claimed output through the same
// model as one prefill (teacher forcing: far cheaper than generating) and looks, at a few
// sampled output positions, at how likely the model finds the token the worker claims.
// An honest worker's token is among the verifier's top candidates, or at least not
// implausible: hardware and batching nondeterminism move probabilities a little, and
// sampling at temperature > 0 picks lower-ranked tokens now and then, so one miss proves
// nothing; a worker that ran a cheaper model or made tokens up misses at many positions.
//
// Everything here is pure and deterministic: which receipts are checked and at which
// positions follow from the receipt's CID, which includes the requester's countersignature
// (with its random nonce), so a worker cannot know when signing whether it will be checked.

import type { CountersignedReceipt } from '../mesh/job-records.ts'
import { MAX_EVIDENCE_POSITIONS, type OpDraft, type PositionEvidence } from './ops.ts'
import { isSampledForCheck, pickCheckPositions } from './spot-check-sampling.ts'

export const DEFAULT_SPOT_CHECK_RATE = 0.05

export interface JudgeInit {
  /** A claimed token within the verifier's top `topK` candidates is plausible. */
  topK?: number
  /** So is one the verifier gives at least this probability. */
  minProb?: number
  /** Lying when more than this share of sampled positions is implausible... */
  maxImplausibleShare?: number
  /** ...and at least this many are (one odd token is never enough). */
  minImplausible?: number
}

export const DEFAULT_JUDGE: Required<JudgeInit> = {
  topK: 8,
  minProb: 1e-3,
  maxImplausibleShare: 0.2,
  minImplausible: 2,
}

export interface Judgement {
  honest: boolean
  sampled: number
  implausible: number
  /** The positions judged implausible: the evidence a fraud proof carries. */
  evidence: PositionEvidence[]
}

/** Whether this receipt is spot-checked, decided from its CID alone (anyone gets the same answer). */
export function shouldSpotCheck(receiptCid: string, rate = DEFAULT_SPOT_CHECK_RATE): boolean {
  return isSampledForCheck(receiptCid, rate)
}

/** Up to `count` distinct output positions to compare, sorted, derived from the receipt CID. */
export function samplePositions(receiptCid: string, outputTokens: number, count = 16): number[] {
  return pickCheckPositions(receiptCid, outputTokens, Math.min(count, MAX_EVIDENCE_POSITIONS))
}

/** Decides honest or lying from the verifier's view at the sampled positions. */
export function judgeTeacherForced(positions: readonly PositionEvidence[], init: JudgeInit = {}): Judgement {
  const opts = { ...DEFAULT_JUDGE, ...init }
  const evidence = positions.filter((p) => !isPlausible(p, opts))
  const sampled = positions.length
  const honest =
    sampled === 0 ||
    evidence.length < opts.minImplausible ||
    evidence.length / sampled <= opts.maxImplausibleShare
  return {
    honest,
    sampled,
    implausible: evidence.length,
    evidence: evidence.slice(0, MAX_EVIDENCE_POSITIONS),
  }
}

function isPlausible(p: PositionEvidence, opts: Required<JudgeInit>): boolean {
  if (p.claimedProb >= opts.minProb) return true
  return p.topK.slice(0, opts.topK).some((c) => c.token === p.claimed)
}

/** The verdict op a verifier appends to its own log. */
export function verdictDraft(receipt: CountersignedReceipt, judgement: Judgement): OpDraft {
  return {
    kind: 'spot-check-verdict',
    body: {
      receipt: receipt.cid,
      worker: receipt.worker,
      model: receipt.receipt.model,
      honest: judgement.honest,
      sampled: judgement.sampled,
      implausible: judgement.implausible,
    },
  }
}

/** The fraud proof a verifier appends when a worker is caught: its receipts stop counting. */
export function fraudProofDraft(receipt: CountersignedReceipt, judgement: Judgement): OpDraft {
  if (judgement.honest) throw new Error('a fraud proof needs a judgement of lying')
  return { kind: 'fraud-proof', body: { receipt: receipt.bytes, evidence: judgement.evidence } }
}

/**
 * The prefill a verifier runs (runtime side): the model's view of `claimedTokens` after
 * `promptTokens`, at `positions` (indices into claimedTokens). Implemented by the runtime
 * with node-llama-cpp `LlamaContextSequence.controlledEvaluate`; kept an interface here so
 * the ledger does not depend on the runtime.
 */
export interface TeacherForcedScorer {
  score(input: {
    modelPath: string
    promptTokens: readonly number[]
    claimedTokens: readonly number[]
    positions: readonly number[]
    topK: number
  }): Promise<PositionEvidence[]>
}
