// Spot-check quality through the real protocol (issue 5): a requester, workers and a checker
// as real libp2p nodes in this process, jobs over /substrate/job/1, checks over
// /substrate/spot-check/1, the checker scoring in a real runner process (unsandboxed here;
// the daemon's runners are sandboxed) and signing verdicts in a real SQLite ledger.
// Measures the false-positive rate on honest workers and the catch rate against workers
// that return random tokens or another model's output.
//
// substrate-tiny is a deterministic bigram machine (a peaked model: the easy case);
// substrate-bench has random weights (a flat distribution over ~750 words: the hard case).
//
//   node bench/spot-check-rates.ts [--runs 20]

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { readGgufFileInfo } from 'node-llama-cpp'
import { generateIdentity } from '../src/identity/keys.ts'
import { createLedger } from '../src/ledger/ledger.ts'
import { DEFAULT_JUDGE } from '../src/ledger/verify-receipt.ts'
import { silentLogger } from '../src/logger.ts'
import { type CountersignedJob, createJobProtocol, type JobProtocol } from '../src/mesh/job-protocol.ts'
import type { RunJob } from '../src/mesh/job-worker.ts'
import { createMeshNode, type MeshNode } from '../src/mesh/libp2p-node.ts'
import { createRuntimeJobRunner } from '../src/mesh/runtime-job.ts'
import { createSpotCheck, type SpotCheck } from '../src/mesh/spot-check.ts'
import { seededRandom, writeBenchModel } from '../src/models/builtin.ts'
import type { ModelRecord } from '../src/models/types.ts'
import { createRuntime } from '../src/runtime/runtime.ts'
import { openDatabase } from '../src/store/database.ts'
import { modelRecordOf, writeTinyModelRecord } from '../test/helpers/tiny-model.ts'
import { loadAverage, machineInfo } from './machine.ts'

const { values } = parseArgs({ options: { runs: { type: 'string', default: '20' } } })
const RUNS = Number(values.runs)
const MAX_TOKENS = 48
const loadBefore = loadAverage()

const dir = mkdtempSync(join(tmpdir(), 'spot-check-rates-'))
const tiny = await writeTinyModelRecord(join(dir, 'tiny.gguf'), 'substrate-tiny:latest')
await writeBenchModel(join(dir, 'bench.gguf'))
const bench = await modelRecordOf(join(dir, 'bench.gguf'), 'substrate-bench:latest')
const byDigest = new Map([tiny, bench].map((m) => [m.digest, m]))
const runtime = createRuntime(
  { logger: silentLogger },
  { threads: 1, parallel: 1, contextSize: 512, keepAliveMs: 600_000, maxLoadedModels: 2 },
)

/** The words of a model's vocabulary (normal tokens after the control and byte tokens). */
async function vocabWords(model: ModelRecord): Promise<string[]> {
  const info = await readGgufFileInfo(model.path)
  const tokens = info.metadata.tokenizer?.ggml?.tokens ?? []
  return tokens.slice(5 + 256 + 1).map((t) => t.replaceAll('\u2581', ' '))
}
const words = { tiny: await vocabWords(tiny), bench: await vocabWords(bench) }
const random = seededRandom(20_261_126)

const honest = createRuntimeJobRunner({ runtime, modelByDigest: (d) => byDigest.get(d) })
/** Claims the manifest's model but streams made-up words of its vocabulary. */
const randomTokens: RunJob = async function* (job) {
  const vocab = job.manifest.model === tiny.digest ? words.tiny : words.bench
  const n = job.manifest.model === tiny.digest ? 18 : MAX_TOKENS
  for (let i = 0; i < n; i++)
    yield { type: 'token', text: vocab[Math.floor(random() * vocab.length)]!, tokens: 1 }
  const stats = { reason: 'length' as const, promptTokens: 8, outputTokens: n, promptEvalMs: 1, evalMs: n }
  yield { type: 'done', stats, loadMs: 0, totalMs: n + 1 }
}
/** Claims the manifest's model but runs the other built-in one. */
const otherModel: RunJob = (job, signal) => {
  const { mode, prompt, messages, options } = job.manifest
  const model = job.manifest.model === tiny.digest ? bench : tiny
  return runtime.generate({ model, mode, prompt, messages, options, signal })
}

interface Peer {
  id: string
  mesh: MeshNode
  jobs: JobProtocol
  check: SpotCheck
  stopLedger(): void
}
async function peer(runJob: RunJob, i: number): Promise<Peer> {
  const identity = generateIdentity()
  const mesh = await createMeshNode({ identity, logger: silentLogger })
  await mesh.start()
  const jobs = createJobProtocol({
    mesh,
    identity,
    logger: silentLogger,
    hasModel: (d) => byDigest.has(d),
    runJob,
  })
  await jobs.start()
  const ledger = createLedger({ db: openDatabase(join(dir, `ledger-${i}.db`)) })
  ledger.start()
  const check = createSpotCheck(
    {
      mesh,
      identity,
      logger: silentLogger,
      ledger,
      runtime,
      modelByDigest: (d) => byDigest.get(d),
      candidates: () => [],
    },
    { rate: 1, checkTimeoutMs: 120_000 },
  )
  await check.start()
  return { id: identity.id, mesh, jobs, check, stopLedger: () => ledger.stop() }
}
const requester = await peer(honest, 0)
let last: CountersignedJob | undefined
requester.jobs.onCountersigned((job) => {
  last = job
})
const checker = await peer(honest, 1)
const workers = {
  honest: await peer(honest, 2),
  random: await peer(randomTokens, 3),
  other: await peer(otherModel, 4),
}
for (const p of [checker, ...Object.values(workers)])
  await requester.mesh.dial(p.mesh.multiaddrs()[0]!, 10_000)
for (const p of Object.values(workers)) await checker.mesh.dial(p.mesh.multiaddrs()[0]!, 10_000)

type Case = {
  name: string
  worker: keyof typeof workers
  model: ModelRecord
  chat?: boolean
  temperature?: number
}
const cases: Case[] = [
  { name: 'honest tiny (greedy, completion)', worker: 'honest', model: tiny },
  { name: 'honest tiny (greedy, chat)', worker: 'honest', model: tiny, chat: true },
  { name: 'honest bench (greedy, completion)', worker: 'honest', model: bench },
  { name: 'honest bench (temperature 0.8, completion)', worker: 'honest', model: bench, temperature: 0.8 },
  {
    name: 'honest bench (temperature 0.8, chat)',
    worker: 'honest',
    model: bench,
    chat: true,
    temperature: 0.8,
  },
  { name: 'random tokens claimed as tiny', worker: 'random', model: tiny },
  { name: 'random tokens claimed as bench', worker: 'random', model: bench },
  { name: 'bench output claimed as tiny', worker: 'other', model: tiny },
  { name: 'tiny output claimed as bench', worker: 'other', model: bench },
]

const results: Record<string, unknown> = {}
const checkMs: number[] = []
for (const c of cases) {
  let flagged = 0
  let implausible = 0
  let sampled = 0
  let mostImplausible = 0
  let leastImplausible = Number.POSITIVE_INFINITY
  const errors: string[] = []
  for (let i = 0; i < RUNS; i++) {
    const question = `Question ${i}: tell me about the commons ${i * 7}.`
    await requester.jobs.run(workers[c.worker].id, {
      model: c.model.digest,
      mode: c.chat === true ? 'chat' : 'completion',
      ...(c.chat === true
        ? { messages: [{ role: 'user' as const, content: question }] }
        : { prompt: question }),
      options: { temperature: c.temperature ?? 0, seed: i + 1 },
      maxTokens: MAX_TOKENS,
    })
    const started = performance.now()
    const r = await requester.check.requestCheck(checker.id, last!)
    checkMs.push(performance.now() - started)
    if ('error' in r) {
      errors.push(r.error.code)
      continue
    }
    if (!r.honest) flagged++
    implausible += r.implausible
    sampled += r.sampled
    mostImplausible = Math.max(mostImplausible, r.implausible)
    leastImplausible = Math.min(leastImplausible, r.implausible)
  }
  const checked = RUNS - errors.length
  const lying = c.worker !== 'honest'
  results[c.name] = {
    runs: RUNS,
    checked,
    [lying ? 'caught' : 'falsePositives']: flagged,
    [lying ? 'catchRate' : 'falsePositiveRate']: Number((flagged / Math.max(1, checked)).toFixed(3)),
    implausibleShareOfSampled: Number((implausible / Math.max(1, sampled)).toFixed(3)),
    [lying ? 'fewestImplausibleInACheck' : 'mostImplausibleInACheck']: lying
      ? leastImplausible
      : mostImplausible,
    ...(errors.length > 0 ? { errors } : {}),
  }
  process.stderr.write(`${c.name}: ${JSON.stringify(results[c.name])}\n`)
}

for (const p of [requester, checker, ...Object.values(workers)]) {
  await p.check.stop()
  await p.jobs.stop()
  await p.mesh.stop()
  p.stopLedger()
}
await runtime.stop()
rmSync(dir, { recursive: true, force: true })

const sorted = [...checkMs].sort((a, b) => a - b)
console.log(
  JSON.stringify(
    {
      bench: 'spot-check-rates',
      machine: machineInfo(),
      loadAverage: { before: loadBefore, after: loadAverage() },
      judge: DEFAULT_JUDGE,
      sampledPositionsPerCheck: 16,
      maxOutputTokens: MAX_TOKENS,
      checkMs: {
        p50: Math.round(sorted[Math.floor(sorted.length / 2)]!),
        p95: Math.round(sorted[Math.floor(sorted.length * 0.95)]!),
      },
      results,
    },
    null,
    2,
  ),
)
