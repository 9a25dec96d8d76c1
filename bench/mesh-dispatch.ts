// Dispatch to an already connected peer: how long from asking the mesh for a job to its first
// token when the worker answers at once, and where that time goes. The worker is its own
// process (bench/mesh-worker-process.ts: the daemon's mesh layer over an instant runtime);
// the requester is the daemon's mesh layer in this process. Each round measures, back to back:
//   job        mesh.generate(): pick a worker, sign the manifest, open a stream, admission,
//              the worker's runtime call, the first token frame (then the receipt exchange)
//   stream     jobs.stream() to the same worker: the same minus picking
//   echo       open a stream and get one frame back: the floor for any new-stream protocol
//   ping       libp2p ping on the open connection: the floor for any round trip
// and, in this process, the CPU parts: signing and verifying a manifest, ranking the view.
//
//   node bench/mesh-dispatch.ts [--rounds 400]

import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { peerIdFromString } from '@libp2p/peer-id'
import { createMemoryReplayGuard } from '../src/identity/envelope.ts'
import { generateIdentity } from '../src/identity/keys.ts'
import { silentLogger } from '../src/logger.ts'
import { signManifest, verifyManifest } from '../src/mesh/job-records.ts'
import { createMesh, type Mesh } from '../src/mesh/mesh.ts'
import { pickWorkers } from '../src/mesh/pick-worker.ts'
import { sourceRevision } from './daemon-process.ts'
import { loadAverage, machineInfo, round, sleep } from './machine.ts'
import { BENCH_DIGEST, ECHO_PROTOCOL, instantRuntime } from './mesh-worker-process.ts'

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '400' } } })
const ROUNDS = Number(values.rounds)
const WARMUP = 30

const percentile = (xs: number[], p: number) => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN
}
const stats = (xs: number[]) => ({
  p50: round(percentile(xs, 50), 2),
  p90: round(percentile(xs, 90), 2),
  p99: round(percentile(xs, 99), 2),
  max: round(Math.max(...xs), 2),
})

/** Starts the worker process and returns its id and address. */
async function startWorker(): Promise<{ id: string; addr: string; stop(): void }> {
  const entry = new URL('./mesh-worker-process.ts', import.meta.url).pathname
  const child = spawn(process.execPath, [entry], { stdio: ['pipe', 'pipe', 'inherit'] })
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the worker process did not start')), 30_000)
    createInterface({ input: child.stdout! }).once('line', (l) => {
      clearTimeout(timer)
      resolve(l)
    })
  })
  const { id, addr } = JSON.parse(line) as { id: string; addr: string }
  return { id, addr, stop: () => child.stdin!.end() }
}

const request = { model: BENCH_DIGEST, mode: 'completion' as const, prompt: 'hi', maxTokens: 1 }
const manifest = { ...request, kind: 'infer' as const, options: {} }

async function timeJob(
  events: AsyncIterable<{ type: string }>,
): Promise<{ firstMs: number; doneMs: number }> {
  const t0 = performance.now()
  let firstMs = Number.NaN
  for await (const ev of events) {
    if (ev.type === 'token' && Number.isNaN(firstMs)) firstMs = performance.now() - t0
  }
  return { firstMs, doneMs: performance.now() - t0 }
}

async function echoMs(mesh: Mesh, worker: string): Promise<number> {
  const t0 = performance.now()
  const stream = await mesh.node.libp2p.dialProtocol(peerIdFromString(worker), ECHO_PROTOCOL, {
    negotiateFully: false,
  })
  stream.send(Uint8Array.of(1))
  for await (const _ of stream) break
  const ms = performance.now() - t0
  await stream.close().catch(() => {})
  return ms
}

/** Mean µs per call of `fn` over `n` calls. */
function cpuMicros(n: number, fn: (i: number) => void): number {
  const t0 = performance.now()
  for (let i = 0; i < n; i++) fn(i)
  return round(((performance.now() - t0) * 1000) / n, 1)
}

async function main(): Promise<void> {
  const loadBefore = loadAverage()
  const worker = await startWorker()
  const identity = generateIdentity()
  const mesh = await createMesh(
    { identity, logger: silentLogger, models: { list: () => [] }, runtime: instantRuntime },
    { node: { bootstrap: [worker.addr] } },
  )
  await mesh.start()
  try {
    const deadline = Date.now() + 30_000
    while (mesh.candidates(BENCH_DIGEST)[0] !== worker.id) {
      if (Date.now() > deadline) throw new Error('the worker never appeared in the capacity view')
      await sleep(50)
    }
    const samples = {
      job: [] as number[],
      jobDone: [] as number[],
      stream: [] as number[],
      echo: [] as number[],
      ping: [] as number[],
    }
    // The mesh pings its peers itself (latency for ranking) and libp2p allows one outbound ping
    // stream per connection: when ours meets that one, wait for it and ask again.
    const pingOnce = async (m: typeof mesh, peer: string): Promise<number> => {
      for (let attempt = 0; ; attempt++) {
        try {
          return await m.node.libp2p.services.ping.ping(peerIdFromString(peer))
        } catch (err) {
          if (attempt >= 20 || (err as { name?: string }).name !== 'TooManyOutboundProtocolStreamsError')
            throw err
          await sleep(10)
        }
      }
    }
    for (let r = 0; r < WARMUP + ROUNDS; r++) {
      const job = await timeJob(mesh.generate(request))
      const direct = await timeJob(mesh.jobs.stream(worker.id, request))
      const echo = await echoMs(mesh, worker.id)
      const ping = await pingOnce(mesh, worker.id)
      if (r < WARMUP) continue
      samples.job.push(job.firstMs)
      samples.jobDone.push(job.doneMs)
      samples.stream.push(direct.firstMs)
      samples.echo.push(echo)
      samples.ping.push(ping)
    }
    // The CPU parts, in this process.
    const other = generateIdentity()
    const signed = Array.from({ length: 2_000 }, () => signManifest(other, manifest))
    const guard = createMemoryReplayGuard()
    const view = mesh.capacity.view()
    const bigView = Array.from({ length: 100 }, (_, i) => ({ ...view[0]!, peer: `${view[0]!.peer}-${i}` }))
    const parts = {
      signManifestUs: cpuMicros(2_000, () => signManifest(identity, manifest)),
      verifyManifestUs: cpuMicros(2_000, (i) =>
        verifyManifest(signed[i]!.bytes, other.id, { replay: guard }),
      ),
      pickWorkersUs: cpuMicros(2_000, () => mesh.candidates(BENCH_DIGEST)),
      pickWorkers100PeersUs: cpuMicros(2_000, () => pickWorkers(bigView, BENCH_DIGEST)),
    }
    const job = stats(samples.job)
    console.log(
      JSON.stringify(
        {
          benchmark: 'mesh-dispatch',
          rounds: ROUNDS,
          firstTokenMs: {
            job,
            streamWithoutPick: stats(samples.stream),
            echoNewStream: stats(samples.echo),
            ping: stats(samples.ping),
          },
          wholeJobWithReceiptMs: stats(samples.jobDone),
          cpuParts: parts,
          targets: { p50Ms: 5, p99Ms: 20 },
          met: { p50: job.p50 <= 5, p99: job.p99 <= 20 },
          machine: machineInfo(),
          loadAverage: { before: loadBefore, after: loadAverage() },
          source: sourceRevision(),
        },
        null,
        2,
      ),
    )
  } finally {
    await mesh.stop()
    worker.stop()
  }
}

await main()
