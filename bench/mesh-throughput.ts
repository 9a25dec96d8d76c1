// Decode speed and time to first token of a job over the mesh against the same worker's own
// API, side by side in one run: two `substrate serve` processes on loopback; the worker holds
// the built-in substrate-bench and has it loaded, the requester does not hold it and asks the
// mesh (its unchanged /api/generate). Same prompt, greedy, the same token count, rounds
// alternating which path goes first; medians. A second probe per round asks for one token
// after a one-word prompt: the fixed cost of each path.
//
//   node bench/mesh-throughput.ts [--rounds 7] [--predict 256] [--threads 1]

import { parseArgs } from 'node:util'
import { sourceRevision, startDaemon } from './daemon-process.ts'
import { type StreamSample, streamGenerate } from './generate-stream.ts'
import { loadAverage, machineInfo, median, round, sleep } from './machine.ts'

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '7' },
    predict: { type: 'string', default: '256' },
    threads: { type: 'string', default: '1' },
  },
})
const ROUNDS = Number(values.rounds)
const N_PREDICT = Number(values.predict)
const THREADS = Number(values.threads)
const MODEL = 'substrate-bench'
// A different opening each round, and a different first letter per path, so neither path can
// reuse a prompt prefix the other (or the round before) left in the worker's cache: both run
// on the same worker, and the second path of a round would otherwise skip the prompt.
const OPENINGS = ['Rivers', 'Lanterns', 'Quiet snow', 'Bakers', 'Tall grass', 'Old maps', 'Evening trains']
const promptFor = (r: number, path: 'local' | 'mesh') =>
  `${path === 'local' ? 'L' : 'M'}${r}. ${OPENINGS[r % OPENINGS.length]}: the valley is slow, the mill keeps turning, and the ferry waits for the last passengers of the night.`

interface MeshPeers {
  peers: Array<{ id: string; models: Array<{ name: string; loaded: boolean }> }>
}

async function main(): Promise<void> {
  const loadBefore = loadAverage()
  const started = Date.now()
  const worker = await startDaemon({ threads: THREADS })
  const requester = await (async () => {
    try {
      const status = (await (await fetch(`${worker.url}/substrate/v1/status`)).json()) as {
        id: string
        mesh: { addrs: string[] } | null
      }
      const addr = status.mesh?.addrs[0]
      if (addr === undefined) throw new Error('the worker daemon has no mesh address')
      // The worker builds substrate-bench and loads it (keep-alive is forever in bench daemons).
      await streamGenerate(worker.url, MODEL, 'Warm the runner up.', 8)
      const r = await startDaemon({ threads: THREADS, env: { SUBSTRATE_BOOTSTRAP: addr } })
      const deadline = Date.now() + 30_000
      for (;;) {
        const body = (await (await fetch(`${r.url}/substrate/v1/peers`)).json()) as MeshPeers
        const offered = body.peers
          .find((p) => p.id === status.id)
          ?.models.find((m) => m.name.startsWith(MODEL))
        if (offered?.loaded === true) break
        if (Date.now() > deadline) throw new Error('the requester never saw the worker offer the model')
        await sleep(100)
      }
      return r
    } catch (err) {
      await worker.stop()
      throw err
    }
  })()
  try {
    // One mesh job to warm the connection and the requester's code paths.
    await streamGenerate(requester.url, MODEL, 'Warm the mesh up.', 8)
    const paths = { local: worker.url, mesh: requester.url }
    const samples: Record<'local' | 'mesh', StreamSample[]> = { local: [], mesh: [] }
    const probes: Record<'local' | 'mesh', number[]> = { local: [], mesh: [] }
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? (['local', 'mesh'] as const) : (['mesh', 'local'] as const)
      for (const path of order) {
        samples[path].push(await streamGenerate(paths[path], MODEL, promptFor(r, path), N_PREDICT))
        const word = `${path === 'local' ? 'L' : 'M'}word${r}`
        probes[path].push((await streamGenerate(paths[path], MODEL, word, 1)).ttftMs)
      }
    }
    const summary = (path: 'local' | 'mesh') => ({
      decodeTps: round(median(samples[path].map((s) => s.decodeTps))),
      ttftMs: round(median(samples[path].map((s) => s.ttftMs))),
      oneTokenTtftMs: round(median(probes[path])),
      tokens: samples[path][0]?.tokens,
      decodeTpsRange: [
        round(Math.min(...samples[path].map((s) => s.decodeTps))),
        round(Math.max(...samples[path].map((s) => s.decodeTps))),
      ],
    })
    const local = summary('local')
    const mesh = summary('mesh')
    // Per-round ratios: both paths ran back to back on the same machine state.
    const roundRatios = samples.mesh.map((m, i) => round(m.decodeTps / samples.local[i]!.decodeTps, 3))
    console.log(
      JSON.stringify(
        {
          benchmark: 'mesh-throughput',
          model: MODEL,
          rounds: ROUNDS,
          predict: N_PREDICT,
          threads: THREADS,
          local,
          mesh,
          ratio: {
            meshOverLocalDecode: round(mesh.decodeTps / local.decodeTps, 3),
            perRound: roundRatios,
            medianOfRounds: round(median(roundRatios), 3),
            ttftOverheadMs: round(mesh.ttftMs - local.ttftMs),
            oneTokenTtftOverheadMs: round(mesh.oneTokenTtftMs - local.oneTokenTtftMs),
          },
          targets: { meshOverLocalDecode: 0.95, ttftOverheadMs: 20 },
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
    await requester.stop()
    await worker.stop()
  }
}

await main()
