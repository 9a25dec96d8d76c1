// Streaming decode speed and time to first token for one GGUF (the built-in substrate-bench),
// greedy, the same prompts and the same threads, through three paths measured side by side:
//   ours        the daemon (`substrate serve`) → runner process → node-llama-cpp, /api/generate
//   llama-server llama.cpp's own server, built from the llama.cpp source node-llama-cpp ships
//   in-process  node-llama-cpp's LlamaCompletion in this process: the engine, no daemon
// for threads = 1 and 2 (pinned everywhere), plus the daemon's auto mode (threads = 0).
// Rounds interleave every contender, rotating the order, and the median of the rounds is kept.
//
//   node bench/generate-throughput.ts [--rounds 3] [--predict 256] [--threads 1,2] [--sandbox bwrap|gvisor|none]

import { parseArgs } from 'node:util'
import { getLlama, LlamaCompletion, type LlamaContextSequence, LlamaLogLevel } from 'node-llama-cpp'
import {
  loadedRunner,
  modelPath,
  sandboxInForce,
  sourceRevision,
  startDaemon,
  threadCalibration,
} from './daemon-process.ts'
import { type StreamSample, streamGenerate } from './generate-stream.ts'
import { llamaServerBinDir, llamaServerVersion, startLlamaServer } from './llama-server-process.ts'
import { cpuMs, loadAverage, machineInfo, median, nodeDescendant, round } from './machine.ts'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    predict: { type: 'string', default: '256' },
    threads: { type: 'string', default: '1,2' },
    // the runner sandbox for our daemon; absent: the daemon's default (bwrap)
    sandbox: { type: 'string' },
    // our daemon's engine (runtime.engine): llama-server (built by `substrate engine build`) or node-llama-cpp
    engine: { type: 'string', default: 'llama-server' },
  },
})
const ROUNDS = Number(values.rounds)
const N_PREDICT = Number(values.predict)
const MODEL = 'substrate-bench'
const CONTEXT = 4096 // per sequence: the daemon's default runtime.contextSize
const PARALLEL = 4 // sequences: the daemon's default runtime.parallel
const THREADS = values.threads.split(',').map(Number)
// Each round has its own prompt, and the prompts start differently, so no contender can
// reuse a cached prefix from the round before; within a round every contender gets the same.
const PROMPTS = [
  'Rivers carve the valley slowly, and the mill keeps turning through the night.',
  'Lanterns glow along the harbour while the ferry waits for the last passengers.',
  'Quiet snow covers the orchard, and the old gate creaks whenever wind arrives.',
  'Bakers start before dawn; the street smells of bread long before anyone wakes.',
  'Tall grass bends over the path where the children race toward the summer lake.',
]

interface Contender {
  name: string
  threads: number | 'auto'
  run(prompt: string, nPredict: number): Promise<StreamSample>
  close(): Promise<void>
}

/** CPU the daemon path spends per generated token, outside the model's compute threads. */
interface DaemonCpu {
  tokens: number
  /** the `substrate serve` process: HTTP, routing, relaying runner lines to the client */
  daemonMs: number
  /** the runner's JS thread: node-llama-cpp's per-token loop, callbacks, stdout lines */
  runnerMainThreadMs: number
}

async function daemonContender(threads: number): Promise<
  Contender & {
    modelPath: string
    chosenThreads: number
    calibration: Record<string, number>
    sandbox(): Promise<unknown>
    buildType: string
    cpu: DaemonCpu
  }
> {
  const daemon = await startDaemon({
    threads,
    parallel: PARALLEL,
    contextSize: CONTEXT,
    sandbox: values.sandbox,
    engine: values.engine,
  })
  try {
    await streamGenerate(daemon.url, MODEL, 'Warm the runner up.', 8) // generates the model, loads the runner
    const runner = await loadedRunner(daemon.url)
    const runnerNode = nodeDescendant(runner.pid) // inside the sandbox wrapper, if any
    const cpu: DaemonCpu = { tokens: 0, daemonMs: 0, runnerMainThreadMs: 0 }
    return {
      name: threads === 0 ? 'ours-auto' : `ours-t${threads}`,
      threads: threads === 0 ? 'auto' : threads,
      modelPath: await modelPath(daemon.url, MODEL),
      chosenThreads: runner.threads,
      calibration: threadCalibration(daemon.log()),
      sandbox: () => sandboxInForce(daemon.url),
      buildType: runner.buildType,
      cpu,
      run: async (prompt, nPredict) => {
        const daemonBefore = cpuMs(daemon.pid)
        const runnerBefore = cpuMs(runnerNode, runnerNode)
        const sample = await streamGenerate(daemon.url, MODEL, prompt, nPredict)
        cpu.daemonMs += cpuMs(daemon.pid) - daemonBefore
        cpu.runnerMainThreadMs += cpuMs(runnerNode, runnerNode) - runnerBefore
        cpu.tokens += sample.tokens
        return sample
      },
      close: () => daemon.stop(),
    }
  } catch (err) {
    await daemon.stop()
    throw err
  }
}

/** This process's JS thread while it generates in-process: node-llama-cpp's own per-token loop. */
interface JsCpu {
  tokens: number
  mainThreadMs: number
}

async function inProcessContenders(path: string): Promise<{
  contenders: Contender[]
  buildType: string
  jsCpu: Map<number, JsCpu>
  close(): Promise<void>
}> {
  // The same calls the runner makes (src/runtime/runner-main.ts), minus the process and HTTP.
  const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error, maxThreads: 0 })
  const model = await llama.loadModel({ modelPath: path })
  const contenders: Contender[] = []
  const jsCpu = new Map<number, JsCpu>()
  for (const threads of THREADS) {
    const cpu: JsCpu = { tokens: 0, mainThreadMs: 0 }
    jsCpu.set(threads, cpu)
    const context = await model.createContext({
      contextSize: CONTEXT * PARALLEL,
      sequences: PARALLEL,
      threads,
    })
    const sequence: LlamaContextSequence = context.getSequence()
    const run = async (prompt: string, nPredict: number): Promise<StreamSample> => {
      const completion = new LlamaCompletion({ contextSequence: sequence, autoDisposeSequence: false })
      let firstAt = 0
      let tokens = 0
      const cpuBefore = cpuMs(process.pid, process.pid)
      const started = performance.now()
      await completion.generateCompletion(prompt, {
        temperature: 0,
        topK: 40,
        topP: 0.9,
        repeatPenalty: false,
        maxTokens: nPredict,
        onToken: (t) => {
          if (tokens === 0) firstAt = performance.now()
          tokens += t.length
        },
      })
      const doneAt = performance.now()
      cpu.mainThreadMs += cpuMs(process.pid, process.pid) - cpuBefore
      cpu.tokens += tokens
      completion.dispose({ disposeSequence: false })
      const decodeTps = ((tokens - 1) * 1000) / (doneAt - firstAt)
      return {
        ttftMs: firstAt - started,
        decodeTps,
        tokens,
        reportedTps: decodeTps,
        reportedPromptMs: firstAt - started,
        promptTokens: model.tokenize(prompt).length + 1, // + BOS, as the servers count it
      }
    }
    await run('Warm the context up.', 8)
    Object.assign(cpu, { tokens: 0, mainThreadMs: 0 })
    contenders.push({ name: `in-process-t${threads}`, threads, run, close: () => context.dispose() })
  }
  const close = async () => {
    for (const c of contenders) await c.close()
    await model.dispose()
    await llama.dispose()
  }
  return { contenders, buildType: llama.buildType, jsCpu, close }
}

interface Row {
  contender: string
  threads: number | 'auto'
  tokens: number
  decodeTps: number
  ttftMs: number
  ttftOneWordMs: number
  reportedTps: number
  reportedPromptMs: number
  promptTokens: number
  msPerToken: number
  rounds: Array<{ decodeTps: number; ttftMs: number }>
}

function summarise(c: Contender, samples: StreamSample[], shortTtft: number[]): Row {
  const decodeTps = median(samples.map((s) => s.decodeTps))
  return {
    contender: c.name,
    threads: c.threads,
    tokens: median(samples.map((s) => s.tokens)),
    decodeTps: round(decodeTps),
    ttftMs: round(median(samples.map((s) => s.ttftMs)), 2),
    ttftOneWordMs: round(median(shortTtft), 2),
    reportedTps: round(median(samples.map((s) => s.reportedTps))),
    reportedPromptMs: round(median(samples.map((s) => s.reportedPromptMs)), 2),
    promptTokens: median(samples.map((s) => s.promptTokens)),
    msPerToken: round(1000 / decodeTps, 3),
    rounds: samples.map((s) => ({ decodeTps: round(s.decodeTps), ttftMs: round(s.ttftMs, 2) })),
  }
}

const loadBefore = loadAverage()
const started = Date.now()
const cleanup: Array<() => Promise<void>> = []
try {
  const ours: Array<Awaited<ReturnType<typeof daemonContender>>> = []
  for (const threads of [...THREADS, 0]) {
    const c = await daemonContender(threads)
    cleanup.push(c.close)
    ours.push(c)
  }
  const path = ours[0]!.modelPath
  const binDir = llamaServerBinDir()
  const servers: Contender[] = []
  if (binDir) {
    for (const threads of THREADS) {
      const server = await startLlamaServer(binDir, {
        modelPath: path,
        threads,
        contextSize: CONTEXT,
        parallel: PARALLEL,
      })
      const c: Contender = {
        name: `llama-server-t${threads}`,
        threads,
        run: (prompt, nPredict) => server.completion(prompt, nPredict),
        close: () => server.stop(),
      }
      cleanup.push(c.close)
      await c.run('Warm the server up.', 8)
      servers.push(c)
    }
  }
  const inProcess = await inProcessContenders(path)
  cleanup.push(inProcess.close)
  const contenders = [...ours, ...servers, ...inProcess.contenders]

  const samples = new Map<string, StreamSample[]>(contenders.map((c) => [c.name, []]))
  const shortTtft = new Map<string, number[]>(contenders.map((c) => [c.name, []]))
  const roundLoads: string[] = []
  for (let r = 0; r < ROUNDS; r++) {
    roundLoads.push(loadAverage())
    const prompt = PROMPTS[r % PROMPTS.length]!
    const order = [...contenders.slice(r % contenders.length), ...contenders.slice(0, r % contenders.length)]
    for (const c of order) samples.get(c.name)!.push(await c.run(prompt, N_PREDICT))
    // a one-word prompt and one token: what is left of TTFT when there is almost no prompt
    // to evaluate, i.e. the fixed cost of each path
    const word = prompt.split(' ')[0]!
    for (const c of order) shortTtft.get(c.name)!.push((await c.run(word, 1)).ttftMs)
  }
  const rows = contenders.map((c) => summarise(c, samples.get(c.name)!, shortTtft.get(c.name)!))
  const row = (name: string) => rows.find((x) => x.contender === name)

  const ratios: Record<string, Record<string, number | null | Record<string, number>>> = {}
  for (const t of THREADS) {
    const o = row(`ours-t${t}`)!
    const oc = ours.find((c) => c.threads === t)!
    const pc = inProcess.jsCpu.get(t)!
    const s = row(`llama-server-t${t}`)
    const p = row(`in-process-t${t}`)!
    ratios[`threads=${t}`] = {
      oursOverLlamaServer: s ? round(o.decodeTps / s.decodeTps, 3) : null,
      oursOverInProcess: round(o.decodeTps / p.decodeTps, 3),
      inProcessOverLlamaServer: s ? round(p.decodeTps / s.decodeTps, 3) : null,
      ttftOverheadMs: s ? round(o.ttftMs - s.ttftMs, 2) : null,
      ttftOneWordOverheadMs: s ? round(o.ttftOneWordMs - s.ttftOneWordMs, 2) : null,
      // the TTFT gap split the same way: daemon path (HTTP, runner IPC) vs engine prompt eval
      daemonTtftMs: round(o.ttftMs - p.ttftMs, 2),
      engineTtftOverLlamaServerMs: s ? round(p.ttftMs - s.ttftMs, 2) : null,
      // where the time per token goes: the daemon path on top of the engine, and the
      // engine (node-llama-cpp's prebuilt binary) on top of llama-server
      daemonMsPerToken: round(o.msPerToken - p.msPerToken, 3),
      // CPU the daemon path burns per token (on a 2-core machine it competes with the model)
      daemonProcessCpuMsPerToken: round(oc.cpu.daemonMs / oc.cpu.tokens, 3),
      runnerJsThreadCpuMsPerToken: round(oc.cpu.runnerMainThreadMs / oc.cpu.tokens, 3),
      inProcessJsThreadCpuMsPerToken: round(pc.mainThreadMs / pc.tokens, 3),
      engineMsPerTokenOverLlamaServer: s ? round(p.msPerToken - s.msPerToken, 3) : null,
    }
  }
  const auto = ours.find((c) => c.threads === 'auto')!
  const autoRow = row('ours-auto')!
  const bestServer = rows
    .filter((x) => x.contender.startsWith('llama-server'))
    .sort((a, b) => b.decodeTps - a.decodeTps)[0]
  ratios.auto = {
    chosenThreads: auto.chosenThreads,
    // tokens/s the runner measured per thread count (16 tokens each) when it chose
    calibrationTokensPerSecond: auto.calibration,
    oursOverBestLlamaServer: bestServer ? round(autoRow.decodeTps / bestServer.decodeTps, 3) : null,
    bestLlamaServerThreads: bestServer ? Number(bestServer.threads) : null,
    ttftOverheadVsBestLlamaServerMs: bestServer ? round(autoRow.ttftMs - bestServer.ttftMs, 2) : null,
    ttftOneWordOverheadVsBestLlamaServerMs: bestServer
      ? round(autoRow.ttftOneWordMs - bestServer.ttftOneWordMs, 2)
      : null,
  }
  const bestOurs = Math.max(...rows.filter((x) => x.contender.startsWith('ours')).map((x) => x.decodeTps))
  const targets = {
    decodeAtLeast0_9OfLlamaServer: bestServer ? bestOurs / bestServer.decodeTps >= 0.9 : null,
    ttftOverheadAtMost10Ms: bestServer ? autoRow.ttftMs - bestServer.ttftMs <= 10 : null,
  }

  const result = {
    benchmark: 'generate-throughput',
    date: new Date().toISOString(),
    machine: machineInfo(),
    source: sourceRevision(),
    loadavg: { before: loadBefore, rounds: roundLoads, after: loadAverage() },
    model: { name: MODEL, path },
    settings: {
      nPredict: N_PREDICT,
      rounds: ROUNDS,
      temperature: 0,
      contextPerSequence: CONTEXT,
      sequences: PARALLEL,
    },
    builds: {
      runner: ours[0]!.buildType,
      runnerSandbox: await ours[0]!.sandbox(),
      inProcess: inProcess.buildType,
      llamaServer: binDir ? llamaServerVersion(binDir) : 'pending: run bench/build-llama-server.sh',
    },
    rows,
    ratios,
    targets,
    wallSeconds: round((Date.now() - started) / 1000),
  }
  console.log(JSON.stringify(result, null, 2))
  console.error('\ncontender             threads  decode tok/s  TTFT ms  TTFT 1-word ms')
  for (const x of rows) {
    const threads = x.contender === 'ours-auto' ? `auto→${auto.chosenThreads}` : String(x.threads)
    console.error(
      `${x.contender.padEnd(22)}${threads.padEnd(9)}${String(x.decodeTps).padStart(12)}${String(x.ttftMs).padStart(9)}${String(x.ttftOneWordMs).padStart(16)}`,
    )
  }
  for (const [k, v] of Object.entries(ratios)) console.error(`${k}: ${JSON.stringify(v)}`)
  console.error(
    `targets: ${JSON.stringify(targets)}  (load ${result.loadavg.before} → ${result.loadavg.after})`,
  )
} finally {
  for (const close of cleanup.reverse()) await close()
}
