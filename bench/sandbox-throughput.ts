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

/** The runner's node process: the pid itself outside, a descendant of bwrap's pid inside. */
function runnerProcess(pid: number): number {
  const children = (p: number): number[] => {
    try {
      const list = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').split(' ').filter(Boolean)
      return list.map(Number).flatMap((c) => [c, ...children(c)])
    } catch {
      return []
    }
  }
  // bwrap's own argv names the runner too: the node process is the one that starts with node
  const found = [pid, ...children(pid)].find((p) => {
    const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')
    return argv[0] === process.execPath && argv.some((a) => a.includes('runner-main'))
  })
  if (found === undefined) throw new Error(`no runner process under ${pid}`)
  return found
}

/** CPU time (user + system, all threads) of a process so far, in ms. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100
}

interface Sample {
  /** decode tokens/s, prompt evaluation excluded */
  tokensPerSecond: number
  /** CPU the runner spent per generated token: what the sandbox could add, immune to a busy host */
  cpuMsPerToken: number
}

async function decode(runner: RunnerHandle, prompt: string): Promise<Sample> {
  const pid = runnerProcess(runner.pid)
  const cpuBefore = cpuMs(pid)
  for await (const ev of runner.generate({
    mode: 'completion',
    prompt,
    options: { temperature: 0, maxTokens: PREDICT, seed: 1 },
  })) {
    if (ev.type === 'done') {
      return {
        tokensPerSecond: ((ev.stats.outputTokens - 1) * 1000) / ev.stats.evalMs,
        cpuMsPerToken: (cpuMs(pid) - cpuBefore) / ev.stats.outputTokens,
      }
    }
  }
  throw new Error('no done event')
}

const results = []
for (const threads of THREADS) {
  const outside = await start(unsandboxedLauncher, threads)
  const inside = await start(sandboxed, threads)
  await decode(outside, 'warm up')
  await decode(inside, 'warm up')
  const samples = { outside: [] as Sample[], inside: [] as Sample[] }
  for (let i = 0; i < ROUNDS; i++) {
    const prompt = PROMPTS[i % PROMPTS.length]!
    const order = i % 2 === 0 ? (['outside', 'inside'] as const) : (['inside', 'outside'] as const)
    for (const which of order)
      samples[which].push(await decode(which === 'inside' ? inside : outside, prompt))
  }
  await outside.stop()
  await inside.stop()
  const rate = (xs: Sample[]) => median(xs.map((x) => x.tokensPerSecond))
  const cpu = (xs: Sample[]) => median(xs.map((x) => x.cpuMsPerToken))
  const o = rate(samples.outside)
  const n = rate(samples.inside)
  results.push({
    threads,
    tokensPerSecond: { outside: round(o), inside: round(n) },
    ratio: round(n / o, 3),
    cpuMsPerToken: { outside: round(cpu(samples.outside), 2), inside: round(cpu(samples.inside), 2) },
    cpuRatio: round(cpu(samples.outside) / cpu(samples.inside), 3),
    samples: {
      outside: samples.outside.map((x) => round(x.tokensPerSecond)),
      inside: samples.inside.map((x) => round(x.tokensPerSecond)),
    },
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
