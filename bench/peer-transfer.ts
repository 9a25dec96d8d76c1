// Peer model transfer (issue 7) on loopback, with a 1 GiB file of random bytes:
//   1. one holder: `/substrate/model-chunks/2` (chunks verified, written to disk, whole file
//      hashed at the end) against plain TCP and against a bare libp2p stream (Noise + Yamux)
//      between the same two processes, interleaved, with the CPU each side spent per MiB;
//      then chunk sizes 1/4/16 MiB; and the ceilings of one core on this machine: Noise's
//      cipher (ChaCha20-Poly1305 in node:crypto, 64 KiB messages, as libp2p-noise's default
//      calls it and as src/mesh/noise-crypto.ts does) and sha256;
//   2. two holders each rate-limited to R against one holder at R;
//   3. a puller process SIGKILLed half-way and run again: chunks served beyond the file's
//      chunk count are what the resume fetched twice.
//
//   node bench/peer-transfer.ts [--size-mib 1024] [--rate-mib 8] [--rounds 2] [--skip-chunk-sizes]
//                               [--skip-single]
//
// The rate must leave the puller room for two sources (2 × rate well under the one-holder
// protocol rate), or the two-source run measures the puller's CPU, not the sources.

import { type ChildProcess, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { createNoiseCrypto } from '../src/mesh/noise-crypto.ts'
import { CHUNK_SIZE, chunkCount } from '../src/models/chunk-manifest.ts'
import { MiB } from '../src/protocol/limits.ts'
import { RAW_FILE_PROTOCOL } from '../test/mesh/chunk-source.ts'
import {
  type Holder,
  randomFile,
  spawnHolder,
  startPuller,
  type TestPuller,
} from '../test/mesh/transfer-helpers.ts'
import { loadAverage, machineInfo, median, round } from './machine.ts'

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    'rate-mib': { type: 'string', default: '8' },
    rounds: { type: 'string', default: '2' },
    'skip-chunk-sizes': { type: 'boolean', default: false },
    'skip-single': { type: 'boolean', default: false },
  },
})
const size = Number(values['size-mib']) * MiB
const rate = Number(values['rate-mib']) * MiB
const rounds = Number(values.rounds)
const loadBefore = loadAverage()
const dir = await mkdtemp(join(tmpdir(), 'peer-transfer-bench-'))
const file = join(dir, 'model.bin')
const holders: Holder[] = []
const pullers: TestPuller[] = []
const log = (msg: string) => process.stderr.write(`${msg}\n`)

const mbps = (bytes: number, ms: number) => bytes / MiB / (ms / 1000)

async function timed(fn: () => Promise<number>): Promise<number> {
  const started = performance.now()
  const bytes = await fn()
  return mbps(bytes, performance.now() - started)
}

/** CPU milliseconds a process has used (user + system), from /proc. */
function cpuMsOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
}
const CLOCK_TICKS = 100

/** Throughput, and the CPU the puller (this process) and the holder spent per MiB. */
async function measured(holderPid: number, fn: () => Promise<number>) {
  const cpu = process.cpuUsage()
  const holderCpu = cpuMsOf(holderPid)
  const started = performance.now()
  const bytes = await fn()
  const ms = performance.now() - started
  const used = process.cpuUsage(cpu)
  const mib = bytes / MiB
  return {
    mibps: mbps(bytes, ms),
    pullerCpuMsPerMiB: (used.user + used.system) / 1000 / mib,
    holderCpuMsPerMiB: (cpuMsOf(holderPid) - holderCpu) / mib,
  }
}

/** One core's throughput, MiB/s, of `step` over `bytes`-sized inputs, run for about `ms`. */
function coreRate(bytes: number, step: () => void, ms = 1_000): number {
  const started = performance.now()
  let done = 0
  while (performance.now() - started < ms) {
    step()
    done += bytes
  }
  return mbps(done, performance.now() - started)
}

/** What one core here can encrypt + decrypt with Noise's cipher, and hash with sha256. */
function ceilings() {
  const message = randomBytes(NOISE_PLAINTEXT_BYTES)
  const key = randomBytes(32)
  const nonce = Buffer.alloc(12)
  const ad = new Uint8Array(0)
  const roundTrip = (crypto: ICryptoInterface) => () => {
    const sealed = crypto.chaCha20Poly1305Encrypt(message, nonce, ad, key) as Uint8Array
    crypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, key)
  }
  const ours = createNoiseCrypto()
  const libDefault: number[] = []
  const keyObject: number[] = []
  const sha: number[] = []
  const big = randomBytes(CHUNK_SIZE)
  for (let r = 0; r < 3; r++) {
    libDefault.push(coreRate(message.length, roundTrip(defaultCrypto), 500))
    keyObject.push(coreRate(message.length, roundTrip(ours), 500))
    sha.push(coreRate(big.length, () => createHash('sha256').update(big).digest(), 500))
  }
  return {
    noiseCipherEncryptPlusDecryptMiBps: {
      libp2pNoiseDefault: round(median(libDefault)),
      substrateNoiseCrypto: round(median(keyObject)),
    },
    sha256MiBps: round(median(sha)),
  }
}
/** Noise's largest plaintext: 65535-byte messages less the 16-byte tag. */
const NOISE_PLAINTEXT_BYTES = 65_519

function rawTcp(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let bytes = 0
    const socket = connect(port, '127.0.0.1')
    socket.on('data', (b: Buffer) => {
      bytes += b.length
    })
    socket.on('end', () => resolve(bytes))
    socket.on('error', reject)
  })
}

async function rawLibp2p(p: TestPuller, holder: Holder): Promise<number> {
  const stream = await p.mesh.libp2p.dialProtocol(peerIdFromString(holder.id), RAW_FILE_PROTOCOL)
  let bytes = 0
  for await (const chunk of stream) bytes += chunk.byteLength
  return bytes
}

async function pullOnce(p: TestPuller, digest: string): Promise<number> {
  const fetched = await p.pull(digest)
  await rm(fetched.path, { force: true })
  return fetched.size
}

async function holder(config: Parameters<typeof spawnHolder>[0]) {
  const h = await spawnHolder(config)
  holders.push(h)
  return h
}
async function puller(name: string, hs: Holder[]) {
  const p = await startPuller(join(dir, name), hs)
  pullers.push(p)
  return p
}

try {
  log(`writing ${size / MiB} MiB of random bytes`)
  const digest = await randomFile(file, size)
  const chunks = chunkCount(size, CHUNK_SIZE)

  // 1. One holder: protocol against its ceilings, same two processes, interleaved.
  const one = await holder({ file, baselines: true })
  const p1 = await puller('one', [one])
  type Sample = Awaited<ReturnType<typeof measured>>
  const runs: Record<'tcp' | 'libp2p' | 'protocol', Sample[]> = { tcp: [], libp2p: [], protocol: [] }
  const pid = one.child.pid!
  for (let r = 0; r < (values['skip-single'] === true ? 0 : rounds); r++) {
    const order =
      r % 2 === 0 ? (['tcp', 'libp2p', 'protocol'] as const) : (['protocol', 'libp2p', 'tcp'] as const)
    for (const what of order) {
      if (what === 'tcp') runs.tcp.push(await measured(pid, () => rawTcp(one.tcpPort!)))
      if (what === 'libp2p') runs.libp2p.push(await measured(pid, () => rawLibp2p(p1, one)))
      if (what === 'protocol') runs.protocol.push(await measured(pid, () => pullOnce(p1, digest)))
      log(`round ${r + 1} ${what}: ${round(runs[what].at(-1)!.mibps)} MiB/s`)
    }
  }
  const tcp = runs.tcp.map((s) => s.mibps)
  const libp2p = runs.libp2p.map((s) => s.mibps)
  const protocol = runs.protocol.map((s) => s.mibps)
  const cpu = (samples: Sample[]) => ({
    puller: round(median(samples.map((s) => s.pullerCpuMsPerMiB)), 2),
    holder: round(median(samples.map((s) => s.holderCpuMsPerMiB)), 2),
  })
  const single = {
    rawTcpMiBps: round(median(tcp)),
    rawLibp2pStreamMiBps: round(median(libp2p)),
    protocolMiBps: round(median(protocol)),
    protocolOverTcp: round(median(protocol) / median(tcp), 3),
    protocolOverLibp2pStream: round(median(protocol) / median(libp2p), 3),
    libp2pStreamOverTcp: round(median(libp2p) / median(tcp), 3),
    // CPU per MiB moved: on a saturated machine throughput goes as its inverse.
    cpuMsPerMiB: { tcp: cpu(runs.tcp), libp2pStream: cpu(runs.libp2p), protocol: cpu(runs.protocol) },
    samples: {
      tcp: tcp.map((v) => round(v)),
      libp2p: libp2p.map((v) => round(v)),
      protocol: protocol.map((v) => round(v)),
    },
  }
  log(JSON.stringify(single))
  const ceiling = ceilings()
  log(JSON.stringify(ceiling))

  // Chunk size: the same file served with 1, 4 and 16 MiB manifests.
  const chunkSizes: Record<string, number> = {}
  if (values['skip-chunk-sizes'] !== true) {
    for (const mib of [1, 4, 16]) {
      const h = await holder({ file, chunkSize: mib * MiB })
      const p = await puller(`chunk-${mib}`, [h])
      chunkSizes[`${mib}MiB`] = round(await timed(() => pullOnce(p, digest)))
      h.kill()
      log(`chunk size ${mib} MiB: ${chunkSizes[`${mib}MiB`]} MiB/s`)
    }
  }

  // 2. Rate-limited sources: one at R against two at R each.
  const limitedOne = await holder({ file, bytesPerSecond: rate })
  const limitedTwo = [
    await holder({ file, bytesPerSecond: rate }),
    await holder({ file, bytesPerSecond: rate }),
  ]
  const pOne = await puller('limited-one', [limitedOne])
  const pTwo = await puller('limited-two', limitedTwo)
  const oneSource = await timed(() => pullOnce(pOne, digest))
  log(`one rate-limited source: ${round(oneSource)} MiB/s`)
  const twoSources = await timed(() => pullOnce(pTwo, digest))
  log(`two rate-limited sources: ${round(twoSources)} MiB/s`)
  const chunksFrom = pTwo.puller.lastStats()?.chunksFrom ?? {}
  for (const h of [limitedOne, ...limitedTwo]) h.kill()

  // 3. SIGKILL half-way, then resume: both holders count every chunk they serve.
  const resumeHolders = [
    await holder({ file, bytesPerSecond: rate }),
    await holder({ file, bytesPerSecond: rate }),
  ]
  const tmp = join(dir, 'resume', 'tmp')
  await mkdir(tmp, { recursive: true })
  const args = JSON.stringify({
    digest,
    tmpDir: tmp,
    holders: resumeHolders.map((h) => ({ id: h.id, addr: h.addr })),
  })
  const pullProcess = () =>
    spawn(process.execPath, [new URL('./peer-pull-process.ts', import.meta.url).pathname, args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
  const lines = (child: ChildProcess) => createInterface({ input: child.stdout! })
  // Run 1: SIGKILLed once half the file is on disk; every chunk it verified is recorded.
  const first = pullProcess()
  const before = new Set<number>()
  let killedAt = 0
  await new Promise<void>((resolve) => {
    lines(first).on('line', (line) => {
      const ev = JSON.parse(line) as { completed?: number; chunk?: number }
      if (ev.chunk !== undefined) before.add(ev.chunk)
      if (killedAt === 0 && (ev.completed ?? 0) >= size / 2) {
        killedAt = ev.completed ?? 0
        first.kill('SIGKILL')
      }
    })
    first.on('exit', () => resolve())
  })
  log(`puller SIGKILLed at ${round(killedAt / MiB)} MiB`)
  // Run 2: the same command; which chunks it fetches again.
  const second = pullProcess()
  const after: number[] = []
  const result = await new Promise<{ stats: { resumedChunks: number } }>((resolve, reject) => {
    lines(second).on('line', (line) => {
      const ev = JSON.parse(line) as { done?: boolean; chunk?: number }
      if (ev.chunk !== undefined) after.push(ev.chunk)
      if (ev.done === true) resolve(ev as never)
    })
    second.on('exit', (code) => (code === 0 ? undefined : reject(new Error(`resume exited ${code}`))))
  })
  const served = await Promise.all(resumeHolders.map((h) => h.finish()))
  const again = after.filter((i) => before.has(i)).length
  const resume = {
    chunks,
    killedAtMiB: round(killedAt / MiB),
    verifiedBeforeKill: before.size,
    resumedChunks: result.stats.resumedChunks,
    fetchedAfterResume: after.length,
    // Whole chunks verified before the kill and fetched again (state not saved in time).
    refetchedWholeChunks: again,
    // Plus at most one half-received chunk per holder: answers on a holder's stream come in
    // order, so only the one being received when the process died can be partial.
    reDownloadedChunksPerSourceAtMost: round(again / resumeHolders.length + 1, 2),
    // Chunk reads the holders started over both runs (includes chunks queued behind the kill).
    holderChunkReads: served.reduce((n, s) => n + s.servedChunks, 0),
  }

  process.stdout.write(
    `${JSON.stringify(
      {
        benchmark: 'peer-transfer',
        machine: machineInfo(),
        loadAverage: { before: loadBefore, after: loadAverage() },
        fileMiB: size / MiB,
        chunkMiB: CHUNK_SIZE / MiB,
        single,
        oneCoreCeilings: ceiling,
        chunkSizesMiBps: chunkSizes,
        rateLimited: {
          rateMiBps: rate / MiB,
          oneSourceMiBps: round(oneSource),
          twoSourcesMiBps: round(twoSources),
          twoOverOne: round(twoSources / oneSource, 3),
          chunksFrom,
        },
        resume,
        targets: {
          protocolOverTcpAtLeast: 0.7,
          twoOverOneAtLeast: 1.8,
          reDownloadedChunksPerSourceAtMost: 1,
        },
      },
      null,
      2,
    )}\n`,
  )
} finally {
  for (const h of holders) h.kill()
  await Promise.all(pullers.map((p) => p.stop()))
  await rm(dir, { recursive: true, force: true })
}
