// Aggregate decode throughput of one loaded model under 1, 2, 4 and 8 concurrent streams:
// the daemon runs with runtime.parallel 8, so every stream gets its own sequence and the
// runner's node-llama-cpp context batches their decode steps together. Aggregate tokens/s
// is all streams' tokens over the wall time from the first request sent to the last final
// chunk. llama-server with 8 slots is measured alongside, when it has been built, as the
// reference for what llama.cpp's own batching gives on this machine, and llama-bench gives
// the ceiling: how much faster one forward pass over N tokens is than N passes over one.
//
//   node bench/concurrency.ts [--rounds 3] [--predict 256] [--threads 1,2] [--sandbox bwrap|gvisor|none]

import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { loadedRunner, modelPath, sandboxInForce, sourceRevision, startDaemon } from './daemon-process.ts'
import { type StreamSample, streamGenerate } from './generate-stream.ts'
import { llamaServerBinDir, startLlamaServer } from './llama-server-process.ts'
import { loadAverage, machineInfo, median, nodeDescendant, peakRssMiB, round } from './machine.ts'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    predict: { type: 'string', default: '256' },
    threads: { type: 'string', default: '1,2' },
    // the runner sandbox; absent: the daemon's default (bwrap)
    sandbox: { type: 'string' },
    // the daemon's engine (runtime.engine): llama-server (built by `substrate engine build`) or node-llama-cpp
    engine: { type: 'string', default: 'llama-server' },
  },
})
const ROUNDS = Number(values.rounds)
const N_PREDICT = Number(values.predict)
const THREADS = values.threads.split(',').map(Number)
const MODEL = 'substrate-bench'
const PARALLEL = 8
const CONTEXT = 1024 // per sequence: a 256-token answer fits; keeps 8 sequences' KV small
const STREAMS = [1, 2, 4, 8] as const

// A different opening for each stream, so no two share a cached prefix.
const openings = [
  'Rivers',
  'Lanterns',
  'Quiet',
  'Bakers',
  'Tall',
  'Copper',
  'Morning',
  'Seven',
  'Under',
  'Foxes',
]
const promptFor = (round: number, stream: number) =>
  `${openings[(round * 3 + stream) % openings.length]} and the rest of the story, part ${round}.${stream}:`

type Run = (prompt: string) => Promise<StreamSample>

interface Level {
  streams: number
  aggregateTps: number
  perStreamDecodeTps: number
  ttftMs: number
  rounds: number[]
}

async function measureLevels(run: Run): Promise<Level[]> {
  const byLevel = new Map<number, Array<{ aggregate: number; perStream: number; ttft: number }>>()
  for (let r = 0; r < ROUNDS; r++) {
    // rotate the order so drift in the machine's load does not favour one level
    const order = [...STREAMS.slice(r % STREAMS.length), ...STREAMS.slice(0, r % STREAMS.length)]
    for (const n of order) {
      const started = performance.now()
      const samples = await Promise.all(Array.from({ length: n }, (_, i) => run(promptFor(r, i))))
      const wallMs = performance.now() - started
      const tokens = samples.reduce((sum, s) => sum + s.tokens, 0)
      const list = byLevel.get(n) ?? []
      list.push({
        aggregate: (tokens * 1000) / wallMs,
        perStream: median(samples.map((s) => s.decodeTps)),
        ttft: median(samples.map((s) => s.ttftMs)),
      })
      byLevel.set(n, list)
    }
  }
  return STREAMS.map((n) => {
    const list = byLevel.get(n) ?? []
    return {
      streams: n,
      aggregateTps: round(median(list.map((x) => x.aggregate))),
      perStreamDecodeTps: round(median(list.map((x) => x.perStream))),
      ttftMs: round(median(list.map((x) => x.ttft)), 2),
      rounds: list.map((x) => round(x.aggregate)),
    }
  })
}

/**
 * The ceiling batching can reach: llama.cpp's own llama-bench timing one forward pass over a
 * batch of N tokens (prompt processing, pp N) against a batch of 1. N concurrent streams
 * decode as one batch of N tokens per step, so their aggregate cannot beat this by much.
 */
function batchCeiling(binDir: string, path: string, threads: number): Record<string, number> {
  const res = spawnSync(
    join(binDir, 'llama-bench'),
    ['-m', path, '-t', String(threads), '-p', STREAMS.join(','), '-n', '0', '-r', '10', '-o', 'json'],
    { encoding: 'utf8' },
  )
  if (res.status !== 0) return {}
  const rows = JSON.parse(res.stdout) as Array<{ n_prompt: number; avg_ts: number }>
  return Object.fromEntries(rows.map((r) => [String(r.n_prompt), round(r.avg_ts)]))
}

const speedups = (levels: Level[]) =>
  Object.fromEntries(levels.map((l) => [`${l.streams}`, round(l.aggregateTps / levels[0]!.aggregateTps, 3)]))

const loadBefore = loadAverage()
const started = Date.now()
type Result = { contender: 'ours' | 'llama-server'; threads: number } & (
  | { levels: Level[]; speedupOver1Stream: Record<string, number>; runnerPeakMiB?: number }
  | { error: string }
)
const results: Result[] = []
const ceilings: Array<Record<string, unknown>> = []
const binDir = llamaServerBinDir()
let path = ''
let buildType = ''
let sandbox: unknown
for (const threads of THREADS) {
  const daemon = await startDaemon({
    threads,
    parallel: PARALLEL,
    contextSize: CONTEXT,
    sandbox: values.sandbox,
    engine: values.engine,
  })
  try {
    path = await modelPath(daemon.url, MODEL) // generates the model without loading a runner
    sandbox = await sandboxInForce(daemon.url)
    try {
      await streamGenerate(daemon.url, MODEL, 'Warm the runner up.', 8)
      const runner = await loadedRunner(daemon.url)
      buildType = runner.buildType
      const levels = await measureLevels((prompt) => streamGenerate(daemon.url, MODEL, prompt, N_PREDICT))
      // the runner's peak memory with 8 sequences, next to the sandbox's ceiling for it
      const runnerPeakMiB = round(peakRssMiB(nodeDescendant(runner.pid)))
      results.push({
        contender: 'ours',
        threads,
        levels,
        speedupOver1Stream: speedups(levels),
        runnerPeakMiB,
      })
    } catch (err) {
      // a runner that cannot start with 8 sequences is a result too: record it, go on
      results.push({ contender: 'ours', threads, error: err instanceof Error ? err.message : String(err) })
    }
    // llama-server reads the daemon's own copy of the model, so it runs while the daemon
    // (idle now) still holds the file
    if (binDir) {
      const server = await startLlamaServer(binDir, {
        modelPath: path,
        threads,
        contextSize: CONTEXT,
        parallel: PARALLEL,
      })
      try {
        await server.completion('Warm the server up.', 8)
        const levels = await measureLevels((prompt) => server.completion(prompt, N_PREDICT))
        results.push({ contender: 'llama-server', threads, levels, speedupOver1Stream: speedups(levels) })
      } finally {
        await server.stop()
      }
      const tokensPerSecond = batchCeiling(binDir, path, threads)
      const one = tokensPerSecond['1'] ?? Number.NaN
      ceilings.push({
        threads,
        tokensPerSecondByBatch: tokensPerSecond,
        overBatch1: Object.fromEntries(
          Object.entries(tokensPerSecond).map(([n, v]) => [n, round(v / one, 3)]),
        ),
      })
    }
  } finally {
    await daemon.stop()
  }
}

const fourOverOne = results.flatMap((r) =>
  r.contender === 'ours' && 'levels' in r ? [r.speedupOver1Stream['4'] ?? 0] : [],
)
const result = {
  benchmark: 'concurrency',
  date: new Date().toISOString(),
  machine: machineInfo(),
  source: sourceRevision(),
  loadavg: { before: loadBefore, after: loadAverage() },
  model: { name: MODEL, path },
  settings: {
    nPredict: N_PREDICT,
    rounds: ROUNDS,
    parallel: PARALLEL,
    contextPerSequence: CONTEXT,
    threads: THREADS,
  },
  runnerBuild: buildType,
  runnerSandbox: sandbox,
  llamaServer: binDir ? 'built' : 'pending: run bench/build-llama-server.sh',
  results,
  llamaBenchBatchCeiling: ceilings,
  target: {
    fourStreamsAtLeast1_5xOfOne: fourOverOne.length > 0 ? fourOverOne.some((x) => x >= 1.5) : null,
    fourOverOne,
  },
  wallSeconds: round((Date.now() - started) / 1000),
}
console.log(JSON.stringify(result, null, 2))
console.error('\ncontender      threads  streams  aggregate tok/s  per-stream tok/s  TTFT ms  ×1 stream')
for (const r of results) {
  if ('error' in r) {
    console.error(`${r.contender.padEnd(15)}${String(r.threads).padEnd(9)}failed: ${r.error}`)
    continue
  }
  const levels = r.levels
  for (const l of levels) {
    const x = round(l.aggregateTps / levels[0]!.aggregateTps, 2)
    console.error(
      `${String(r.contender).padEnd(15)}${String(r.threads).padEnd(9)}${String(l.streams).padEnd(9)}${String(l.aggregateTps).padStart(15)}${String(l.perStreamDecodeTps).padStart(18)}${String(l.ttftMs).padStart(9)}${String(x).padStart(11)}`,
    )
  }
}
console.error(
  `target 4 streams ≥ 1.5× of 1: ${JSON.stringify(result.target)}  (load ${loadBefore} → ${result.loadavg.after})`,
)
