import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { generateIdentity } from '../../src/identity/keys.ts'
import { balanceOf, foldOps } from '../../src/ledger/balances.ts'
import type { PositionEvidence } from '../../src/ledger/ops.ts'
import {
  fraudProofDraft,
  judgeTeacherForced,
  samplePositions,
  shouldSpotCheck,
  verdictDraft,
} from '../../src/ledger/verify-receipt.ts'
import { verifyCountersignedReceipt } from '../../src/mesh/job-records.ts'
import { chain, genesisOp, makeReceipt, openLog, receiptOp, T0 } from './fixtures.ts'

const at = (position: number, claimed: number, claimedProb: number, top: number[]): PositionEvidence => ({
  position,
  claimed,
  claimedProb,
  topK: top.map((token, i) => ({ token, prob: 0.5 / (i + 1) })),
})

describe('spot-check sampling', () => {
  test('about the configured share of receipts is checked, the same on every node', () => {
    const cids = Array.from({ length: 20_000 }, (_, i) => `bafyreceipt${i}`)
    const checked = cids.filter((c) => shouldSpotCheck(c, 0.05)).length
    assert.ok(checked > 850 && checked < 1150, `${checked} of 20000 at 5 %`)
    assert.deepEqual(
      cids.slice(0, 500).map((c) => shouldSpotCheck(c)),
      cids.slice(0, 500).map((c) => shouldSpotCheck(c)),
    )
    assert.equal(shouldSpotCheck('x', 0), false)
    assert.equal(shouldSpotCheck('x', 1), true)
  })

  test('sampled positions are distinct, in range and deterministic', () => {
    const p = samplePositions('bafyr', 1000, 16)
    assert.equal(new Set(p).size, 16)
    assert.ok(p.every((x) => x >= 0 && x < 1000))
    assert.deepEqual(p, samplePositions('bafyr', 1000, 16))
    assert.deepEqual(samplePositions('bafyr', 5, 16), [0, 1, 2, 3, 4])
  })
})

describe('teacher-forced judgement', () => {
  test('an honest run with a little nondeterminism passes', () => {
    const positions = Array.from({ length: 16 }, (_, i) =>
      // top-1 mostly; twice the claimed token is second or a low-probability sample
      i === 3 ? at(i, 7, 0.2, [9, 7]) : i === 9 ? at(i, 42, 0.004, [1, 2, 3]) : at(i, i, 0.9, [i]),
    )
    assert.equal(judgeTeacherForced(positions).honest, true)
  })

  test('one implausible token is never enough to call a worker a liar', () => {
    const positions = [at(0, 5, 0, [1, 2]), at(1, 1, 0.9, [1])]
    assert.equal(judgeTeacherForced(positions).honest, true)
  })

  test('random tokens are caught', () => {
    const positions = Array.from({ length: 16 }, (_, i) => at(i, 30_000 + i, 1e-6, [i, i + 1, i + 2]))
    const j = judgeTeacherForced(positions)
    assert.equal(j.honest, false)
    assert.equal(j.implausible, 16)
  })

  test('a lying verdict becomes a fraud proof op that voids the worker', () => {
    const worker = generateIdentity()
    const requester = generateIdentity()
    const verifier = generateIdentity()
    const bytes = makeReceipt(worker, requester)
    const receipt = verifyCountersignedReceipt(bytes, T0)
    const j = judgeTeacherForced(Array.from({ length: 8 }, (_, i) => at(i, 999, 0, [i])))
    const { log } = openLog()
    const verdict = log.append(verifier, verdictDraft(receipt, j), { now: T0 + 10 })
    assert.equal(verdict.facts.kind, 'spot-check-verdict')
    const proof = log.append(verifier, fraudProofDraft(receipt, j), { now: T0 + 20 })
    assert.deepEqual(proof.facts, { kind: 'fraud-proof', receipt: receipt.cid, worker: worker.id })
    const voucher = generateIdentity()
    const vouching = chain(voucher, [genesisOp(), { kind: 'vouch', body: { member: verifier.id } }])
    const membership = chain(verifier, [genesisOp()], { after: proof, at: T0 + 30 })
    const receiptLog = chain(requester, [receiptOp(bytes)], { at: T0 + 5 })
    const state = foldOps([...receiptLog, verdict, proof, ...membership, ...vouching], [])
    assert.equal(balanceOf(state, worker.id).earned, 0)
    assert.throws(() => fraudProofDraft(receipt, { ...j, honest: true }))
  })
})
