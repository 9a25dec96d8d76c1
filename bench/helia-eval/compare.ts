// Helia (IPFS in JS: UnixFS over bitswap) against Substrate's `/substrate/model-chunks/1`,
// moving the same file between two processes on loopback, interleaved. Helia is installed
// only here (its own package.json), never as a dependency of substrate:
//
//   (cd bench/helia-eval && npm install)
//   node bench/helia-eval/compare.ts [--size-mib 1024] [--rounds 2]
//
// The trustless-gateway path is not measured: Helia ships only its client side, and there
// is no JS trustless-gateway server to point it at without writing one.

import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { MiB } from '../../src/protocol/limits.ts'
import { type Holder, randomFile, spawnHolder, startPuller } from '../../test/mesh/transfer-helpers.ts'
import { loadAverage, machineInfo, median, round } from '../machine.ts'

const { values } = parseArgs({
  options: { 'size-mib': { type: 'string', default: '1024' }, rounds: { type: 'string', default: '2' } },
})
const size = Number(values['size-mib']) * MiB
const rounds = Number(values.rounds)
const loadBefore = loadAverage()
const dir = await mkdtemp(join(tmpdir(), 'helia-eval-'))
const heliaNode = new URL('./helia-node.ts', import.meta.url).pathname
const children: ChildProcess[] = []
const log = (msg: string) => process.stderr.write(`${msg}\n`)

function run(args: string[], keepOpen: boolean): { child: ChildProcess; firstLine: Promise<string> } {
  const child = spawn(process.execPath, [heliaNode, ...args], {
    stdio: [keepOpen ? 'pipe' : 'ignore', 'pipe', 'inherit'],
  })
  children.push(child)
  const lines = createInterface({ input: child.stdout! })
  return { child, firstLine: new Promise((resolve) => lines.once('line', resolve)) }
}

let holder: Holder | undefined
try {
  log(`writing ${size / MiB} MiB of random bytes`)
  const file = join(dir, 'model.bin')
  const digest = await randomFile(file, size)

  const served = run(['serve', file, join(dir, 'helia-serve')], true)
  const heliaServer = JSON.parse(await served.firstLine) as { cid: string; addr: string; addMs: number }
  log(`helia added the file in ${round(heliaServer.addMs)} ms`)
  holder = await spawnHolder({ file })
  const puller = await startPuller(join(dir, 'substrate'), [holder])

  const helia: number[] = []
  const substrate: number[] = []
  for (let r = 0; r < rounds * 2; r++) {
    if ((r % 4 === 0 || r % 4 === 3) === true) {
      const fetched = run(['fetch', heliaServer.cid, heliaServer.addr, join(dir, `helia-fetch-${r}`)], false)
      const { bytes, ms } = JSON.parse(await fetched.firstLine) as { bytes: number; ms: number }
      if (bytes !== size) throw new Error(`helia fetched ${bytes} of ${size} bytes`)
      helia.push(bytes / MiB / (ms / 1000))
      await rm(join(dir, `helia-fetch-${r}`), { recursive: true, force: true })
      log(`helia bitswap: ${round(helia.at(-1)!)} MiB/s`)
    } else {
      const started = performance.now()
      const fetched = await puller.pull(digest)
      substrate.push(fetched.size / MiB / ((performance.now() - started) / 1000))
      await rm(fetched.path, { force: true })
      log(`substrate chunks: ${round(substrate.at(-1)!)} MiB/s`)
    }
  }
  await puller.stop()
  process.stdout.write(
    `${JSON.stringify(
      {
        benchmark: 'helia-eval',
        machine: machineInfo(),
        loadAverage: { before: loadBefore, after: loadAverage() },
        fileMiB: size / MiB,
        heliaAddMs: round(heliaServer.addMs),
        heliaBitswapMiBps: round(median(helia)),
        substrateChunksMiBps: round(median(substrate)),
        substrateOverHelia: round(median(substrate) / median(helia), 3),
        samples: { helia: helia.map((v) => round(v)), substrate: substrate.map((v) => round(v)) },
      },
      null,
      2,
    )}\n`,
  )
} finally {
  holder?.kill()
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL')
  await rm(dir, { recursive: true, force: true })
}
