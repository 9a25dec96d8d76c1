// The verifier's prefill on the real built-in model: substrate-tiny answers every prompt
// with one fixed sentence, so its honest output is known and anything else is a lie.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { createLlamaScorer, type LlamaScorer } from '../../src/ledger/teacher-forced-llama.ts'
import { DEFAULT_JUDGE, judgeTeacherForced, samplePositions } from '../../src/ledger/verify-receipt.ts'
import { TINY_ANSWER, writeTinyModel } from '../../src/models/builtin.ts'

const dir = mkdtempSync(join(tmpdir(), 'teacher-forced-'))
const modelPath = join(dir, 'tiny.gguf')
let scorer: LlamaScorer

before(async () => {
  await writeTinyModel(modelPath)
  scorer = await createLlamaScorer({ contextSize: 256 })
})
after(async () => {
  await scorer.close()
  rmSync(dir, { recursive: true, force: true })
})

// What substrate-tiny generates: its answer's word tokens, which follow the 5 control, 256
// byte and 1 "▁" tokens in its vocabulary (src/models/builtin.ts). Tokenizing the text back
// would not give them: the tiny vocabulary has no merges, so text falls back to bytes.
const ANSWER_TOKENS = TINY_ANSWER.split(' ').map((_, i) => 262 + i)

async function judge(claimedTokens: number[]) {
  const promptTokens = await scorer.tokenize(modelPath, 'Hello, who are you?')
  const positions = samplePositions('bafytest', claimedTokens.length, 16)
  const evidence = await scorer.score({
    modelPath,
    promptTokens,
    claimedTokens,
    positions,
    topK: DEFAULT_JUDGE.topK,
  })
  assert.equal(evidence.length, positions.length)
  return judgeTeacherForced(evidence)
}

test('the honest answer of substrate-tiny passes its spot check', async () => {
  const j = await judge(ANSWER_TOKENS)
  assert.equal(j.honest, true)
  assert.equal(j.implausible, 0)
})

test('made-up tokens claimed as substrate-tiny output are caught', async () => {
  const j = await judge([...ANSWER_TOKENS].reverse())
  assert.equal(j.honest, false)
  assert.ok(j.evidence.length >= 2)
})
