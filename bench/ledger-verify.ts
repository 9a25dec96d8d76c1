// Spot-check quality with the built-in models (issue 5): the false-positive rate on honest
// runs and the catch rate against a worker that returns random tokens or a cheaper model's
// output, judged by verify-receipt.ts's judgeTeacherForced on a teacher-forced prefill
// (teacher-forced-llama.ts). substrate-tiny is a deterministic bigram machine (a peaked
// model); substrate-bench has random weights (a flat one: the hard case).
//
//   node bench/ledger-verify.ts [runs=30]

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Token } from 'node-llama-cpp'
import { createLlamaScorer } from '../src/ledger/teacher-forced-llama.ts'
import { DEFAULT_JUDGE, judgeTeacherForced, samplePositions } from '../src/ledger/verify-receipt.ts'
import { seededRandom, TINY_ANSWER, writeBenchModel, writeTinyModel } from '../src/models/builtin.ts'

const RUNS = Number(process.argv[2] ?? 30)
const OUTPUT_TOKENS = 48
const dir = mkdtempSync(join(tmpdir(), 'ledger-verify-'))
const tiny = join(dir, 'tiny.gguf')
const bench = join(dir, 'bench.gguf')
await writeTinyModel(tiny)
await writeBenchModel(bench)

const lib = await import('node-llama-cpp')
const llama = await lib.getLlama({ gpu: false, logLevel: lib.LlamaLogLevel.error })
const models = {
  tiny: await llama.loadModel({ modelPath: tiny }),
  bench: await llama.loadModel({ modelPath: bench }),
}

// A fresh context per generation: reusing one sequence after breaking out of evaluate()
// at end-of-sequence hung the next getSequence() here.
async function generate(name: 'tiny' | 'bench', prompt: number[], temperature: number, seed: number) {
  const context = await models[name].createContext({ contextSize: 256, threads: 1 })
  const sequence = context.getSequence()
  const out: number[] = []
  try {
    for await (const token of sequence.evaluate(prompt as Token[], { temperature, seed })) {
      if (models[name].isSpecialToken(token)) break
      out.push(token)
      if (out.length >= OUTPUT_TOKENS) break
    }
  } finally {
    await context.dispose()
  }
  return out
}

const scorer = await createLlamaScorer({ contextSize: 512 })
const paths = { tiny, bench }
const random = seededRandom(7)
const FIRST_NORMAL = 5 + 256 // control tokens, then byte tokens (src/models/builtin.ts)

type Case = {
  name: string
  model: 'tiny' | 'bench'
  lying: boolean
  claimed: (i: number, prompt: number[]) => Promise<number[]>
}
const cases: Case[] = [
  { name: 'honest tiny (greedy)', model: 'tiny', lying: false, claimed: (i, p) => generate('tiny', p, 0, i) },
  {
    name: 'honest bench (greedy)',
    model: 'bench',
    lying: false,
    claimed: (i, p) => generate('bench', p, 0, i),
  },
  {
    name: 'honest bench (temperature 0.8)',
    model: 'bench',
    lying: false,
    claimed: (i, p) => generate('bench', p, 0.8, i),
  },
  {
    name: 'random tokens claimed as tiny',
    model: 'tiny',
    lying: true,
    claimed: async () => {
      // tiny's normal tokens: "▁", the answer's words, "▁tick", "▁tock"
      const normal = 1 + TINY_ANSWER.split(' ').length + 2
      return Array.from({ length: 20 }, () => FIRST_NORMAL + Math.floor(random() * normal))
    },
  },
  {
    name: 'random tokens claimed as bench',
    model: 'bench',
    lying: true,
    claimed: async () =>
      Array.from(
        { length: OUTPUT_TOKENS },
        () => FIRST_NORMAL + Math.floor(random() * (1024 - FIRST_NORMAL)),
      ),
  },
  {
    name: 'tiny output claimed as bench (cheaper model)',
    model: 'bench',
    lying: true,
    claimed: async (i, p) => {
      const text = models.tiny.detokenize((await generate('tiny', p.slice(0, 1), 0, i)) as Token[])
      return [...models.bench.tokenize(text)].slice(0, OUTPUT_TOKENS)
    },
  },
]

const results: Record<string, unknown> = {}
let scoreMs = 0
let scoredTokens = 0
for (const c of cases) {
  let judgedLying = 0
  let implausible = 0
  let sampled = 0
  for (let i = 0; i < RUNS; i++) {
    const prompt = [...models[c.model].tokenize(`Question ${i}: tell me about the commons ${i * 7}.`)]
    const claimed = await c.claimed(i + 1, prompt)
    const positions = samplePositions(`bafybench${c.name}${i}`, claimed.length, 16)
    const t = performance.now()
    const evidence = await scorer.score({
      modelPath: paths[c.model],
      promptTokens: prompt,
      claimedTokens: claimed,
      positions,
      topK: DEFAULT_JUDGE.topK,
    })
    scoreMs += performance.now() - t
    scoredTokens += prompt.length + claimed.length
    const j = judgeTeacherForced(evidence)
    if (!j.honest) judgedLying++
    implausible += j.implausible
    sampled += j.sampled
  }
  results[c.name] = {
    runs: RUNS,
    [c.lying ? 'catchRate' : 'falsePositiveRate']: Number(
      ((c.lying ? judgedLying : judgedLying) / RUNS).toFixed(3),
    ),
    implausibleShareOfSampled: Number((implausible / Math.max(1, sampled)).toFixed(3)),
  }
}

await scorer.close()
for (const m of Object.values(models)) await m.dispose()
await llama.dispose()
rmSync(dir, { recursive: true, force: true })

console.log(
  JSON.stringify(
    {
      bench: 'ledger-verify',
      cpu: /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown',
      loadAverage: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
      judge: DEFAULT_JUDGE,
      sampledPositionsPerCheck: 16,
      prefillTokensPerSec: Math.round((scoredTokens / scoreMs) * 1000),
      results,
    },
    null,
    2,
  ),
)
