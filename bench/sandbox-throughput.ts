// Decode speed inside the runner sandbox against outside, measured side by side in one run:
// the same runner code, the built-in substrate-bench model (~25M F16 parameters), the same
// pinned thread count, greedy sampling, the same prompts. Each round runs both, alternating
// which goes first; the median of the rounds' tokens/s is kept. Prints JSON.
// Target (issue 6): inside / outside ≥ 0.97.
//
//   node bench/sandbox-throughput.ts [--rounds 5] [--predict 256] [--threads 1,2] [--backend bwrap]

import { readFileSync, rmSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { silentLogger } from '../src/logger.ts'
import { writeBenchModel } from '../src/models/builtin.ts'
import { type RunnerHandle, startRunner } from '../src/runtime/runner-client.ts'
import { type RunnerLauncher, unsandboxedLauncher } from '../src/runtime/spawn.ts'
import { createRunnerSpawner, type SandboxBackend } from '../src/sandbox/select.ts'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    predict: { type: 'string', default: '256' },
    threads: { type: 'string', default: '1,2' },
    backend: { type: 'string', default: 'bwrap' },
  },
})
const ROUNDS = Number(values.rounds)
const PREDICT = Number(values.predict)
const THREADS = values.threads.split(',').map(Number)
const BACKEND = values.backend as SandboxBackend
const PROMPTS = [
  'Rivers carve the valley slowly, and the mill keeps turning through the night.',
  'Lanterns glow along the harbour while the ferry waits for the last passengers.',
  'Quiet snow covers the orchard, and the old gate creaks whenever wind arrives.',
  'Bakers start before dawn; the street smells of bread long before anyone wakes.',
  'Tall grass bends over the path where the children race toward the summer lake.',
]

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}
const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits

const dir = await mkdtemp(join(tmpdir(), 'substrate-bench-throughput-'))
const modelPath = join(dir, 'bench.gguf')
await writeBenchModel(modelPath)
const sandboxed = await createRunnerSpawner({ logger: silentLogger }, { backend: BACKEND })
if (!sandboxed.describe().enforced)
  throw new Error(`${BACKEND} does not run here: ${sandboxed.describe().reason}`)

async function start(launcher: RunnerLauncher, threads: number): Promise<RunnerHandle> {
  return startRunner({ launcher, logger: silentLogger, modelPath, contextSize: 1024, parallel: 1, threads })
}

/** Decode tokens/s of one greedy completion (prompt evaluation excluded). */
async function decode(runner: RunnerHandle, prompt: string): Promise<number> {
  for await (const ev of runner.generate({
    mode: 'completion',
    prompt,
    options: { temperature: 0, maxTokens: PREDICT, seed: 1 },
  })) {
    if (ev.type === 'done') return ((ev.stats.outputTokens - 1) * 1000) / ev.stats.evalMs
  }
  throw new Error('no done event')
}

const results = []
for (const threads of THREADS) {
  const outside = await start(unsandboxedLauncher, threads)
  const inside = await start(sandboxed, threads)
  await decode(outside, 'warm up')
  await decode(inside, 'warm up')
  const samples = { outside: [] as number[], inside: [] as number[] }
  for (let i = 0; i < ROUNDS; i++) {
    const prompt = PROMPTS[i % PROMPTS.length]!
    const order = i % 2 === 0 ? (['outside', 'inside'] as const) : (['inside', 'outside'] as const)
    for (const which of order)
      samples[which].push(await decode(which === 'inside' ? inside : outside, prompt))
  }
  await outside.stop()
  await inside.stop()
  const o = median(samples.outside)
  const n = median(samples.inside)
  results.push({
    threads,
    tokensPerSecond: { outside: round(o), inside: round(n) },
    ratio: round(n / o, 3),
    samples: { outside: samples.outside.map((x) => round(x)), inside: samples.inside.map((x) => round(x)) },
  })
}
rmSync(dir, { recursive: true, force: true })

const cpu = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim()
console.log(
  JSON.stringify(
    {
      bench: 'sandbox-throughput',
      backend: BACKEND,
      machine: { cpu, cores: availableParallelism(), node: process.version, root: process.getuid?.() === 0 },
      model: 'substrate-bench',
      predict: PREDICT,
      rounds: ROUNDS,
      results,
      target: 0.97,
      loadAverage: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    },
    null,
    2,
  ),
)
