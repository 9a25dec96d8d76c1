// What the daemon costs a machine when it is doing nothing, and how fast the CLI answers:
//  - resident memory (VmRSS) of an idle `substrate serve` with no model loaded, after 20 s
//    left alone, run from the sources (type stripping) and from the build (median of
//    --rss-runs daemons), each split into anonymous and file-backed pages (memorySplit);
//  - wall time of `substrate --version`, median of N runs, from the sources and the build,
//    next to a bare `node -e 0` (the floor any Node CLI pays).
// The build is compiled afresh (tsconfig.build.json) so it is current, into a cache folder
// under node_modules: packages still resolve from there, and neither the project's dist/
// nor the linted bench/ folder is touched.
//
//   node bench/daemon-footprint.ts [--runs 10] [--rss-runs 3]

import { spawn, spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { repoRoot, sourceRevision, startDaemon } from './daemon-process.ts'
import {
  loadAverage,
  type MemorySplit,
  machineInfo,
  median,
  memorySplit,
  round,
  rssMiB,
  sleep,
} from './machine.ts'

const { values } = parseArgs({
  options: { runs: { type: 'string', default: '10' }, 'rss-runs': { type: 'string', default: '3' } },
})
const RUNS = Number(values.runs)
const RSS_RUNS = Number(values['rss-runs'])
const RSS_TARGET_MB = 120
const RSS_TARGET_MiB = (RSS_TARGET_MB * 1e6) / 2 ** 20
const VERSION_TARGET_MS = 300

const distDir = join(repoRoot, 'node_modules/.cache/substrate-bench/dist')
// tsc emits even when it reports type errors (work in progress elsewhere in the tree): only a
// missing entry point stops the benchmark
const build = spawnSync(
  process.execPath,
  [join(repoRoot, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', distDir],
  { cwd: repoRoot, encoding: 'utf8' },
)
if (!existsSync(join(distDir, 'cli/main.js')))
  throw new Error(`the build produced no cli/main.js:\n${build.stdout}`)
const buildTypeErrors = build.status === 0 ? 0 : (build.stdout.match(/error TS/g) ?? []).length

const entries = {
  source: join(repoRoot, 'src/cli/main.ts'),
  built: join(distDir, 'cli/main.js'),
}

/**
 * RSS of a process left alone: sampled every 500 ms for at least 20 s (V8's memory reducer
 * acts ~10 s after a process goes quiet; an idle daemon lives in that state), then until
 * three samples agree within 1 MiB, at most 30 s.
 */
async function settledRss(
  pid: number,
): Promise<{ rssMiB: number; split: MemorySplit; settledAfterMs: number; samples: number[] }> {
  const started = performance.now()
  const samples: number[] = []
  for (;;) {
    await sleep(500)
    samples.push(rssMiB(pid))
    const last = samples.slice(-3)
    const elapsed = performance.now() - started
    const settled = elapsed >= 20_000 && Math.max(...last) - Math.min(...last) < 1
    if (settled || elapsed > 30_000) {
      return {
        rssMiB: round(samples.at(-1)!),
        split: memorySplit(pid),
        settledAfterMs: Math.round(elapsed),
        // one sample a second is enough to see the shape
        samples: samples.filter((_, i) => i % 2 === 1).map((s) => round(s)),
      }
    }
  }
}

async function idleDaemon(entry: string, env?: Record<string, string>) {
  const daemon = await startDaemon({ entry, env })
  try {
    const settled = await settledRss(daemon.pid)
    const runners = (await (await fetch(`${daemon.url}/substrate/v1/runners`)).json()) as {
      runners: unknown[]
    }
    const status = readFileSync(`/proc/${daemon.pid}/status`, 'utf8')
    const peakMiB = Number(/^VmHWM:\s*(\d+)/m.exec(status)?.[1] ?? Number.NaN) / 1024
    return { ...settled, peakMiB: round(peakMiB), loadedRunners: runners.runners.length }
  } finally {
    await daemon.stop()
  }
}

async function idleBareNode() {
  return idleNode('setInterval(() => {}, 60_000)')
}

/** RSS of a node process that has imported one module (a path or a package) and idles. */
async function importRss(specifier: string): Promise<number | string> {
  if (specifier.startsWith('/') && !existsSync(specifier)) return 'absent'
  const url = specifier.startsWith('/') ? pathToFileURL(specifier).href : specifier
  return (await idleNode(`await import(${JSON.stringify(url)}); setInterval(() => {}, 60_000)`)).rssMiB
}

async function idleNode(code: string) {
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], {
    cwd: repoRoot,
    stdio: 'ignore',
  })
  try {
    return await settledRss(child.pid ?? 0)
  } finally {
    child.kill('SIGKILL')
  }
}

/** One command's wall time, ms, from spawn to exit. */
function wallMs(args: string[]): number {
  const started = performance.now()
  const res = spawnSync(process.execPath, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] })
  const ms = performance.now() - started
  if (res.status !== 0) throw new Error(`${args.join(' ')} exited ${res.status}: ${res.stderr}`)
  return ms
}

/** The built daemon started `RSS_RUNS` times: the run with the median RSS, and every run's split. */
async function idleBuiltMedian() {
  const runs: Array<Awaited<ReturnType<typeof idleDaemon>>> = []
  for (let i = 0; i < RSS_RUNS; i++) runs.push(await idleDaemon(entries.built))
  const sorted = [...runs].sort((a, b) => a.rssMiB - b.rssMiB)
  const mid = sorted[Math.floor((sorted.length - 1) / 2)]!
  return { ...mid, rssMiB: round(median(runs.map((r) => r.rssMiB))), runs: runs.map((r) => r.split) }
}

const loadBefore = loadAverage()
const idle = { source: await idleDaemon(entries.source), built: await idleBuiltMedian() }
// Where the memory goes: the same built daemon without the mesh (libp2p), then also without
// the sandbox, and an idle bare Node process (the floor for any Node daemon).
const breakdown = {
  builtWithoutMesh: await idleDaemon(entries.built, { SUBSTRATE_MESH: 'false' }),
  builtWithoutMeshOrSandbox: await idleDaemon(entries.built, {
    SUBSTRATE_MESH: 'false',
    SUBSTRATE_SANDBOX: 'none',
  }),
  bareNode: await idleBareNode(),
  // what only loading the code costs, before anything starts: a node process that imports the
  // module and then idles
  importOnly: {
    compositionRoot: await importRss(join(distDir, 'node.js')),
    mesh: await importRss(join(distDir, 'mesh/mesh.js')),
    apiServer: await importRss(join(distDir, 'api/server.js')),
    libp2p: await importRss('libp2p'),
  },
}

const commands = {
  nodeFloor: ['-e', '0'],
  source: [entries.source, '--version'],
  built: [entries.built, '--version'],
} as const
const times: Record<keyof typeof commands, number[]> = { nodeFloor: [], source: [], built: [] }
for (const args of Object.values(commands)) wallMs([...args]) // warm the file cache
for (let i = 0; i < RUNS; i++) {
  for (const [name, args] of Object.entries(commands) as Array<[keyof typeof commands, readonly string[]]>) {
    times[name].push(wallMs([...args]))
  }
}
const version = Object.fromEntries(
  Object.entries(times).map(([name, list]) => [
    name,
    { medianMs: round(median(list)), minMs: round(Math.min(...list)), maxMs: round(Math.max(...list)) },
  ]),
) as Record<keyof typeof commands, { medianMs: number; minMs: number; maxMs: number }>

const result = {
  benchmark: 'daemon-footprint',
  date: new Date().toISOString(),
  machine: machineInfo(),
  source: sourceRevision(),
  loadavg: { before: loadBefore, after: loadAverage() },
  buildTypeErrors,
  idleDaemonRss: idle,
  idleRssBreakdown: breakdown,
  versionWallTime: { runs: RUNS, ...version },
  // Judged on the build: it is what `substrate` (package.json bin) runs for users; the
  // source run adds Node's type stripping and is reported next to it.
  targets: {
    idleRssAtMost120MB: {
      target: RSS_TARGET_MB,
      targetMiB: round(RSS_TARGET_MiB),
      met: idle.built.rssMiB <= RSS_TARGET_MiB,
    },
    versionAtMost300Ms: { target: VERSION_TARGET_MS, met: version.built.medianMs <= VERSION_TARGET_MS },
  },
}
console.log(JSON.stringify(result, null, 2))
const splitLine = (name: string, s: MemorySplit) =>
  `\n  ${name.padEnd(26)} ${s.rssMiB.toFixed(1).padStart(6)} = anon ${s.anonMiB.toFixed(1).padStart(5)} + file ${s.fileMiB.toFixed(1).padStart(5)} (2 MiB-mapped ${s.filePmdMappedMiB}); Pss ${s.pssMiB}`
console.error(
  `\nresident MiB, as VmRSS = RssAnon + RssFile (file: mostly the node binary, shared):` +
    splitLine('bare node', breakdown.bareNode.split) +
    splitLine('built (median run)', idle.built.split) +
    idle.built.runs.map((s, i) => splitLine(`  built run ${i + 1}`, s)).join('') +
    splitLine('built without mesh', breakdown.builtWithoutMesh.split) +
    splitLine('built, no mesh or sandbox', breakdown.builtWithoutMeshOrSandbox.split) +
    splitLine('source', idle.source.split) +
    `\nidle daemon RSS: source ${idle.source.rssMiB} MiB, built ${idle.built.rssMiB} MiB (median of ${RSS_RUNS}; target ≤ ${RSS_TARGET_MB} MB = ${round(RSS_TARGET_MiB)} MiB, judged on the build)` +
    `\n  built without mesh ${breakdown.builtWithoutMesh.rssMiB} MiB, without mesh or sandbox ` +
    `${breakdown.builtWithoutMeshOrSandbox.rssMiB} MiB, bare node ${breakdown.bareNode.rssMiB} MiB` +
    `\n  import only: ${JSON.stringify(breakdown.importOnly)} MiB` +
    `\n--version median of ${RUNS}: source ${version.source.medianMs} ms, built ${version.built.medianMs} ms, ` +
    `bare node ${version.nodeFloor.medianMs} ms (target ≤ ${VERSION_TARGET_MS})` +
    `\nload ${loadBefore} → ${result.loadavg.after}`,
)
