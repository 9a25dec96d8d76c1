// What the runner sandbox costs at start, measured side by side in one run, interleaved:
//   process   spawn → exit of a trivial `node -e ''`: the sandbox's own cost (bwrap, seccomp
//             filter, cgroup create/join/remove, prlimit, setpriv), nothing else
//   runner    spawn → `ready` of the real runner loading substrate-tiny (1 thread): what a
//             user waits for, where the sandbox's share is the difference
// for the full bwrap stack (as root: runner account + cgroup v1) against unsandboxed.
// Prints JSON. Target (issue 6): overhead ≤ 30 ms.
//
//   node bench/sandbox-spawn.ts [--rounds 15]

import { spawn } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { silentLogger } from '../src/logger.ts'
import { writeTinyModel } from '../src/models/builtin.ts'
import { startRunner } from '../src/runtime/runner-client.ts'
import { type RunnerLauncher, spawnUnsandboxedRunner, unsandboxedLauncher } from '../src/runtime/spawn.ts'
import { createSandbox } from '../src/sandbox/bwrap.ts'
import { runnerUserForThisProcess } from '../src/sandbox/runner-user.ts'
import { createRunnerSpawner } from '../src/sandbox/select.ts'

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '15' } } })
const ROUNDS = Number(values.rounds)
const MiB = 2 ** 20

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}
const round = (x: number) => Math.round(x * 10) / 10

const dir = await mkdtemp(join(tmpdir(), 'substrate-bench-sandbox-'))
const modelPath = join(dir, 'tiny.gguf')
await writeTinyModel(modelPath)

const runnerUser = await runnerUserForThisProcess()
const sandbox = createSandbox({ runnerUser, memoryBytes: 512 * MiB, pids: 256, tmpfsBytes: 64 * MiB })
const sandboxed = await createRunnerSpawner({ logger: silentLogger }, { backend: 'bwrap' })
if (!sandboxed.describe().enforced) throw new Error(`bwrap does not run here: ${sandboxed.describe().reason}`)

async function trivialPlain(): Promise<number> {
  const started = performance.now()
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
  await new Promise((resolve) => child.once('exit', resolve))
  return performance.now() - started
}

async function trivialSandboxed(): Promise<number> {
  const started = performance.now()
  const { child, exited } = sandbox.spawn({ argv: [process.execPath, '-e', ''] })
  child.stdin.end()
  // to the exit, as for the plain process: removing the cgroup happens after, off the path
  const code = await new Promise((resolve) => child.once('exit', resolve))
  const ms = performance.now() - started
  await exited
  if (code !== 0) throw new Error(`sandboxed node exited ${code}`)
  return ms
}

async function runnerReady(launcher: RunnerLauncher): Promise<number> {
  const started = performance.now()
  const runner = await startRunner({
    launcher,
    logger: silentLogger,
    modelPath,
    contextSize: 512,
    parallel: 1,
    threads: 1,
  })
  const ms = performance.now() - started
  await runner.stop()
  return ms
}

const samples = {
  processPlain: [] as number[],
  processBwrap: [] as number[],
  runnerPlain: [] as number[],
  runnerBwrap: [] as number[],
}
// one warm-up of each, so page cache and the runner account's first lookups are not measured
await trivialPlain()
await trivialSandboxed()
await runnerReady(unsandboxedLauncher)
await runnerReady(sandboxed)
for (let i = 0; i < ROUNDS; i++) {
  // alternate which goes first, so drift on a shared machine hits both the same
  const pairs: Array<[keyof typeof samples, () => Promise<number>]> = [
    ['processPlain', trivialPlain],
    ['processBwrap', trivialSandboxed],
    ['runnerPlain', () => runnerReady({ ...unsandboxedLauncher, spawn: spawnUnsandboxedRunner })],
    ['runnerBwrap', () => runnerReady(sandboxed)],
  ]
  if (i % 2 === 1) pairs.reverse()
  for (const [key, fn] of pairs) samples[key].push(await fn())
}
rmSync(dir, { recursive: true, force: true })

const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, round(median(v))])) as Record<
  keyof typeof samples,
  number
>
const cpu = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim()
console.log(
  JSON.stringify(
    {
      bench: 'sandbox-spawn',
      machine: { cpu, cores: availableParallelism(), node: process.version, root: process.getuid?.() === 0 },
      cgroups: sandbox.cgroups.version,
      rounds: ROUNDS,
      medianMs: m,
      overheadMs: {
        process: round(m.processBwrap - m.processPlain),
        runnerToReady: round(m.runnerBwrap - m.runnerPlain),
      },
      targetMs: 30,
      loadAverage: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    },
    null,
    2,
  ),
)
