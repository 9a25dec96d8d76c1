// The requester's check of a checker's answer: only the checker's own, consistent verdict
// about this very receipt is accepted; anything else is E_PROTOCOL and lands nowhere.

import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { generateIdentity } from '../../src/identity/keys.ts'
import { fraudProofDraft, judgeTeacherForced, verdictDraft } from '../../src/ledger/verify-receipt.ts'
import { verifyCountersignedReceipt } from '../../src/mesh/job-records.ts'
import { verifyVerdictOps } from '../../src/mesh/spot-check-codec.ts'
import { chain, makeReceipt, T0 } from '../ledger/fixtures.ts'
import { rejectsWith } from './helpers.ts'

const worker = generateIdentity()
const requester = generateIdentity()
const checker = generateIdentity()
const receipt = verifyCountersignedReceipt(makeReceipt(worker, requester), T0)
const other = verifyCountersignedReceipt(makeReceipt(worker, requester), T0)
const at = (position: number, claimedProb: number) => ({
  position,
  claimed: 999,
  claimedProb,
  topK: [{ token: position, prob: 0.9 }],
})
const lying = judgeTeacherForced(Array.from({ length: 8 }, (_, i) => at(i, 0)))
const honest = judgeTeacherForced(Array.from({ length: 8 }, (_, i) => at(i, 0.5)))

describe("a checker's verdict as the requester receives it", () => {
  test('an honest verdict and a lying verdict with its fraud proof are accepted, with their counts', () => {
    const [v] = chain(checker, [verdictDraft(receipt, honest)])
    assert.deepEqual(
      {
        ...verifyVerdictOps({ t: 'verdict', verdict: v!.bytes }, checker.id, receipt.cid),
        verdict: undefined,
      },
      { verdict: undefined, honest: true, sampled: 8, implausible: 0 },
    )
    const [lie, proof] = chain(checker, [verdictDraft(receipt, lying), fraudProofDraft(receipt, lying)])
    const ops = verifyVerdictOps(
      { t: 'verdict', verdict: lie!.bytes, proof: proof!.bytes },
      checker.id,
      receipt.cid,
    )
    assert.equal(ops.honest, false)
    assert.equal(ops.implausible, 8)
  })

  test('a verdict by someone else, about another receipt, or inconsistent with its proof is refused', () => {
    const [byOther] = chain(generateIdentity(), [verdictDraft(receipt, honest)])
    const [aboutOther] = chain(checker, [verdictDraft(other, honest)])
    const [lieNoProof] = chain(checker, [verdictDraft(receipt, lying)])
    const [honestV, strayProof] = chain(checker, [
      verdictDraft(receipt, honest),
      fraudProofDraft(receipt, lying),
    ])
    const [lieV, proofOther] = chain(checker, [verdictDraft(receipt, lying), fraudProofDraft(other, lying)])
    const cases = [
      { t: 'verdict' as const, verdict: byOther!.bytes },
      { t: 'verdict' as const, verdict: aboutOther!.bytes },
      { t: 'verdict' as const, verdict: lieNoProof!.bytes },
      { t: 'verdict' as const, verdict: honestV!.bytes, proof: strayProof!.bytes },
      { t: 'verdict' as const, verdict: lieV!.bytes, proof: proofOther!.bytes },
      { t: 'verdict' as const, verdict: Uint8Array.from([1, 2, 3]) },
    ]
    for (const reply of cases) {
      assert.throws(() => verifyVerdictOps(reply, checker.id, receipt.cid), rejectsWith('E_PROTOCOL'))
    }
  })
})
