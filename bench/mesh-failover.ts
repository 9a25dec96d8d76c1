// Failover mid-stream: a job over the mesh whose worker is SIGKILLed while tokens stream. Three
// `substrate serve` processes on loopback: a requester that does not hold substrate-bench and
// two workers that have it loaded. Each round streams a long greedy answer through the
// requester's /api/generate, kills the worker serving it (as the requester's scheduler counts
// it) once tokens flow, and measures the silence the client sees: from the kill to the next
// chunk, and the longest gap between chunks after it. The killed worker is replaced by a fresh
// daemon before the next round.
//
//   node bench/mesh-failover.ts [--rounds 5] [--predict 1500]

import { parseArgs } from 'node:util'
import { type DaemonProcess, sourceRevision, startDaemon } from './daemon-process.ts'
import { streamGenerate } from './generate-stream.ts'
import { loadAverage, machineInfo, median, round, sleep } from './machine.ts'

const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '5' }, predict: { type: 'string', default: '1500' } },
})
const ROUNDS = Number(values.rounds)
const N_PREDICT = Number(values.predict)
const MODEL = 'substrate-bench'

interface Peer {
  id: string
  models: Array<{ name: string; loaded: boolean }>
  standing?: { inFlight: number }
}

const statusOf = async (url: string) =>
  (await (await fetch(`${url}/substrate/v1/status`)).json()) as {
    id: string
    mesh: { addrs: string[] } | null
  }
const peersOf = async (url: string) =>
  ((await (await fetch(`${url}/substrate/v1/peers`)).json()) as { peers: Peer[] }).peers

async function startWorker(bootstrap: string | undefined): Promise<{ daemon: DaemonProcess; id: string }> {
  const daemon = await startDaemon({
    threads: 1,
    ...(bootstrap === undefined ? {} : { env: { SUBSTRATE_BOOTSTRAP: bootstrap } }),
  })
  await streamGenerate(daemon.url, MODEL, 'Warm the runner up.', 4) // builds and loads the model
  return { daemon, id: (await statusOf(daemon.url)).id }
}

async function untilLoadedOn(requester: string, ids: string[]): Promise<void> {
  const deadline = Date.now() + 60_000
  for (;;) {
    const peers = await peersOf(requester)
    const loaded = ids.every((id) =>
      peers.find((p) => p.id === id)?.models.some((m) => m.name.startsWith(MODEL) && m.loaded),
    )
    if (loaded) return
    if (Date.now() > deadline) throw new Error('the requester never saw both workers with the model loaded')
    await sleep(100)
  }
}

/** Streams through the requester, kills the serving worker after `killAfter` chunks. */
async function roundWithKill(
  requester: DaemonProcess,
  workers: Array<{ daemon: DaemonProcess; id: string }>,
) {
  const res = await fetch(`${requester.url}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({
      model: MODEL,
      prompt: 'Rivers carve the valley slowly.',
      raw: true,
      stream: true,
      options: { temperature: 0, num_predict: N_PREDICT },
    }),
  })
  if (!res.ok || !res.body) throw new Error(`/api/generate: ${res.status} ${await res.text()}`)
  const reader = res.body.getReader()
  const decoder = new TextDecoder()
  let pending = ''
  let chunks = 0
  let killedAt = 0
  let firstAfterKillMs = Number.NaN
  let lastAt = 0
  let longestGapMs = 0
  let victim: string | undefined
  let final: { eval_count?: number; substrate?: { worker: string; resumedAfterTokens?: number } } | undefined
  for (let read = await reader.read(); !read.done; read = await reader.read()) {
    const now = performance.now()
    pending += decoder.decode(read.value, { stream: true })
    const lines = pending.split('\n')
    pending = lines.pop() ?? ''
    for (const line of lines) {
      if (line.trim() === '') continue
      const chunk = JSON.parse(line) as { done?: boolean; error?: string }
      if (chunk.error) throw new Error(chunk.error)
      if (chunk.done) {
        final = chunk as typeof final
        continue
      }
      chunks++
      if (killedAt > 0) {
        if (Number.isNaN(firstAfterKillMs)) firstAfterKillMs = now - killedAt
        longestGapMs = Math.max(longestGapMs, now - Math.max(lastAt, killedAt))
      }
      lastAt = now
    }
    if (victim === undefined && chunks >= 50) {
      const serving = (await peersOf(requester.url)).filter((p) => (p.standing?.inFlight ?? 0) > 0)
      const w = workers.find((x) => x.id === serving[0]?.id)
      if (w === undefined) throw new Error('no worker has the job in flight')
      victim = w.id
      process.kill(w.daemon.pid, 'SIGKILL')
      killedAt = performance.now()
    }
  }
  if (final === undefined || victim === undefined) throw new Error('the stream ended without a final chunk')
  return {
    victim,
    firstChunkAfterKillMs: round(firstAfterKillMs),
    longestGapAfterKillMs: round(longestGapMs),
    tokens: final.eval_count,
    resumedAfterTokens: final.substrate?.resumedAfterTokens,
    servedBySurvivor: final.substrate?.worker !== victim,
  }
}

async function main(): Promise<void> {
  const loadBefore = loadAverage()
  const started = Date.now()
  const workers = [await startWorker(undefined)]
  const bootstrap = (await statusOf(workers[0]!.daemon.url)).mesh?.addrs[0]
  if (bootstrap === undefined) throw new Error('no mesh address')
  let requester: DaemonProcess | undefined
  try {
    workers.push(await startWorker(bootstrap))
    requester = await startDaemon({ threads: 1, sandbox: 'none', env: { SUBSTRATE_BOOTSTRAP: bootstrap } })
    const rounds = []
    for (let r = 0; r < ROUNDS; r++) {
      await untilLoadedOn(
        requester.url,
        workers.map((w) => w.id),
      )
      const result = await roundWithKill(requester, workers)
      rounds.push(result)
      const dead = workers.findIndex((w) => w.id === result.victim)
      await workers[dead]!.daemon.stop() // removes its home; the process is already gone
      const alive = workers.find((w) => w.id !== result.victim)!
      const addr = (await statusOf(alive.daemon.url)).mesh?.addrs[0]
      workers[dead] = await startWorker(addr)
    }
    const gaps = rounds.map((r) => r.longestGapAfterKillMs)
    console.log(
      JSON.stringify(
        {
          benchmark: 'mesh-failover',
          model: MODEL,
          predict: N_PREDICT,
          rounds,
          longestGapAfterKillMs: { median: round(median(gaps)), max: round(Math.max(...gaps)) },
          target: { continuesWithinMs: 2_000 },
          met: gaps.every((g) => g <= 2_000) && rounds.every((r) => r.tokens === N_PREDICT),
          machine: machineInfo(),
          loadAverage: { before: loadBefore, after: loadAverage() },
          wallSeconds: round((Date.now() - started) / 1000),
          source: sourceRevision(),
        },
        null,
        2,
      ),
    )
  } finally {
    await requester?.stop()
    await Promise.all(workers.map((w) => w.daemon.stop()))
  }
}

await main()
