// Chooses and starts the runner sandbox the config asks for, and says what it really got.
// `bwrap` is the default; `gvisor` runs runners under runsc; `none` only by explicit choice,
// logged loudly. A requested backend that cannot run on this host (no binary, the probe
// fails) does not stop the daemon: it serves local requests unsandboxed and says why once,
// and `enforced: false` tells the mesh to refuse remote jobs.

import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process'
import { closeSync, openSync, statSync } from 'node:fs'
import { availableParallelism, constants } from 'node:os'
import { SubstrateError, toSubstrateError } from '../errors.ts'
import { estimateModelMemory, formatBytes } from '../hardware/detect.ts'
import type { Logger } from '../logger.ts'
import {
  type RunnerLauncher,
  type RunnerSpawnSpec,
  runnerEntry,
  runnerEnvironment,
  spawnUnsandboxedRunner,
} from '../runtime/spawn.ts'
import { createSandbox, SANDBOX_ENGINE_PATH, SANDBOX_MODEL_PATH, type Sandbox, sandboxExit } from './bwrap.ts'
import { createGvisorSandbox, GVISOR_ENGINE_PATH, GVISOR_MODEL_PATH } from './gvisor.ts'
import { RUNNER_USER_NAME, type RunnerUser, runnerUserForThisProcess } from './runner-user.ts'

export type SandboxBackend = 'bwrap' | 'gvisor' | 'none'

const MiB = 2 ** 20

export interface RunnerSpawnerInit {
  backend: SandboxBackend
  /** a fixed memory ceiling per runner; derived from the model's estimate when absent */
  memoryBytes?: number
  /** processes and threads per runner (cgroup pids.max) */
  pids?: number
  /** the runner's private /tmp */
  tmpfsBytes?: number
}

export interface SandboxStatus {
  /** what the config asked for */
  requested: SandboxBackend
  /** what runners really start in */
  active: SandboxBackend
  /** true when runners are isolated: the mesh must refuse remote jobs otherwise */
  enforced: boolean
  /** why `active` differs from `requested`, or why it is `none` */
  reason?: string
  /** the host account runners run as (the dedicated one when the daemon is root) */
  runnerUser?: string
}

export interface RunnerSpawner extends RunnerLauncher {
  describe(): SandboxStatus
}

/**
 * The memory ceiling for one runner: the load estimate (weights, KV cache) half again, plus
 * the runner's own Node/V8 and llama.cpp baseline and compute buffers, never under 2 GiB.
 * The estimate leaves out llama.cpp's compute buffers, which grow with parallel sequences:
 * substrate-bench with 8 × 1024 context peaked at 1241 MiB unsandboxed and was OOM-killed at
 * the former ceiling (estimate × 1.25 + 384 MiB = 942 MiB). The ceiling is a guard against a
 * runaway runner, not accounting: only a runner far beyond its model's needs may meet it.
 */
export function runnerMemoryLimit(spec: RunnerSpawnSpec): number {
  let fileSize = 0
  try {
    fileSize = statSync(spec.modelPath).size
  } catch {} // a missing file fails the load inside, with its own error
  const estimate = estimateModelMemory({
    fileSize,
    contextLength: spec.contextSize ?? 4096,
    parallel: spec.parallel ?? 1,
  })
  return Math.ceil(Math.max(2048 * MiB, estimate * 1.5 + 512 * MiB) / MiB) * MiB
}

/**
 * CPU quota in cores: the runner's decode threads plus one for its own event loop, V8 and
 * I/O (at most every core); every core when it picks its threads itself (0). Measured with
 * 1 thread: a quota of exactly 1 core left decoding as fast but made the load ~250 ms slower
 * (1.3 s against 1.05 s), since Node and llama.cpp start on several threads at once.
 */
export function cpuQuota(threads: number): number {
  const cores = availableParallelism()
  return threads > 0 ? Math.min(cores, threads + 1) : cores
}

export async function createRunnerSpawner(
  components: { logger: Logger },
  init: RunnerSpawnerInit,
): Promise<RunnerSpawner> {
  const log = components.logger.child('sandbox')
  if (init.backend === 'none') {
    log.warn(
      'SANDBOX DISABLED (sandbox.backend = none): model runners run with all of this user’s rights; ' +
        'this node refuses mesh jobs. Use it only to debug on a machine you own.',
    )
    return unsandboxed({
      requested: 'none',
      active: 'none',
      enforced: false,
      reason: 'sandbox.backend = none',
    })
  }
  try {
    const runnerUser = await runnerUserForThisProcess()
    const spawner =
      init.backend === 'gvisor'
        ? await gvisorSpawner(init, runnerUser)
        : await bwrapSpawner(init, runnerUser, log)
    if (runnerUser !== undefined) {
      log.info(`the daemon is root: runners run as ${runnerUser.name}`, {
        uid: runnerUser.uid,
        gid: runnerUser.gid,
        backend: init.backend,
      })
    }
    return spawner
  } catch (err) {
    const e = toSubstrateError(err)
    const reason = `${e.message}${e.hint === undefined ? '' : ` (${e.hint})`}`
    log.warn(
      `the ${init.backend} sandbox cannot run here, so runners are NOT sandboxed: this node serves local ` +
        `requests only and refuses mesh jobs. Run 'substrate doctor' for what to fix.`,
      { reason },
    )
    return unsandboxed({ requested: init.backend, active: 'none', enforced: false, reason })
  }
}

/** The model's fd in an unsandboxed runner of a root daemon (stdio is 0-2). */
const PLAIN_MODEL_FD = 3

/**
 * Runners without a sandbox. Even so a root daemon never runs them as root: they run as the
 * runner account, and get the model as an inherited fd (the account cannot reach the store).
 */
async function unsandboxed(status: SandboxStatus): Promise<RunnerSpawner> {
  const base = { exitReason: async () => undefined, describe: () => status }
  if (process.getuid?.() !== 0) {
    return {
      ...base,
      spawn: spawnUnsandboxedRunner,
      modelPathInside: (hostPath) => hostPath,
      enginePathInside: (hostPath) => hostPath,
    }
  }
  let user: RunnerUser | undefined
  let missing: unknown
  try {
    user = await runnerUserForThisProcess()
  } catch (err) {
    missing = err
  }
  if (user !== undefined) status.runnerUser = user.name
  return {
    ...base,
    spawn(spec) {
      if (user === undefined) {
        throw new SubstrateError('E_SANDBOX_UNAVAILABLE', 'refusing to run a model runner as root', {
          cause: missing,
          hint: `create the runner account: useradd --system --no-create-home --shell /usr/sbin/nologin ${RUNNER_USER_NAME}`,
        })
      }
      const modelFd = openSync(spec.modelPath, 'r')
      const engineFd = spec.enginePath === undefined ? 'ignore' : openSync(spec.enginePath, 'r')
      try {
        return spawn(process.execPath, [runnerEntry], {
          stdio: ['pipe', 'pipe', 'pipe', modelFd, engineFd],
          uid: user.uid,
          gid: user.gid, // libuv also drops root's supplementary groups
          cwd: '/',
          env: { ...runnerEnvironment(), HOME: '/tmp' },
        }) as ChildProcessWithoutNullStreams
      } finally {
        closeSync(modelFd)
        if (typeof engineFd === 'number') closeSync(engineFd)
      }
    },
    modelPathInside: () => `/proc/self/fd/${PLAIN_MODEL_FD}`,
    // the runner account cannot reach a build under root's home: it gets the binary as an fd too
    enginePathInside: () => `/proc/self/fd/${PLAIN_MODEL_FD + 1}`,
  }
}

function limitsFor(init: RunnerSpawnerInit, spec: RunnerSpawnSpec) {
  return {
    memoryBytes: init.memoryBytes ?? runnerMemoryLimit(spec),
    pids: init.pids ?? 256,
    tmpfsBytes: init.tmpfsBytes ?? 64 * MiB,
  }
}

/** Starts one trivial process in the sandbox: a missing or broken sandbox fails here, at start. */
async function selfTest(sandbox: Sandbox): Promise<void> {
  const { child, exited } = sandbox.spawn({ argv: [process.execPath, '-e', 'process.exit(0)'] })
  let stderr = ''
  child.stderr.on('data', (d) => {
    stderr += d
  })
  child.stdin.end()
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
  const exit = await exited
  clearTimeout(timer)
  if (exit.code !== 0) {
    const why = exit.signal ?? `exit code ${exit.code}`
    throw new Error(`a test process in the sandbox failed (${why}): ${stderr.trim().slice(-500)}`)
  }
}

async function bwrapSpawner(
  init: RunnerSpawnerInit,
  runnerUser: RunnerUser | undefined,
  log: Logger,
): Promise<RunnerSpawner> {
  // One sandbox per limit set: the memory ceiling differs per model, the rest is shared.
  const base = { runnerUser, pids: init.pids ?? 256, tmpfsBytes: init.tmpfsBytes ?? 64 * MiB }
  const probe = createSandbox({ ...base, memoryBytes: 256 * MiB })
  await selfTest(probe)
  if (probe.cgroups.version === 0) {
    // still isolated, but a runner could take all memory, CPU or pids: say so once
    log.warn('runner memory, CPU and pids limits are NOT enforced (no usable cgroup)', {
      reason: probe.cgroups.reason,
    })
  }
  const limits = new Map<ChildProcessWithoutNullStreams, number>()
  const sandboxes = new Map<number, Sandbox>()
  return {
    spawn(spec) {
      const { memoryBytes } = limitsFor(init, spec)
      let sandbox = sandboxes.get(memoryBytes)
      if (sandbox === undefined) {
        sandbox = createSandbox({ ...base, memoryBytes, cgroups: probe.cgroups })
        sandboxes.set(memoryBytes, sandbox)
      }
      const { child } = sandbox.spawn({
        argv: [process.execPath, runnerEntry],
        modelPath: spec.modelPath,
        enginePath: spec.enginePath,
        cpus: cpuQuota(spec.threads),
      })
      limits.set(child, memoryBytes)
      return child
    },
    modelPathInside: () => SANDBOX_MODEL_PATH,
    enginePathInside: () => SANDBOX_ENGINE_PATH,
    async exitReason(child) {
      const exit = await sandboxExit(child)
      const limit = limits.get(child)
      limits.delete(child)
      if (exit?.oomKilled === true) return `killed: out of memory (limit ${formatBytes(limit ?? 0)})`
      // bwrap exits 128 + N when the runner inside died of signal N (an abort in llama.cpp)
      const signal = signalName((exit?.code ?? 0) - 128)
      return signal === undefined ? undefined : `killed by ${signal} inside the sandbox`
    },
    describe: () => ({
      requested: 'bwrap',
      active: 'bwrap',
      enforced: true,
      ...(runnerUser !== undefined && { runnerUser: runnerUser.name }),
    }),
  }
}

function signalName(n: number): string | undefined {
  if (n <= 0) return undefined
  return Object.entries(constants.signals).find(([, v]) => v === n)?.[0]
}

async function gvisorSpawner(
  init: RunnerSpawnerInit,
  runnerUser: RunnerUser | undefined,
): Promise<RunnerSpawner> {
  const sandbox = await createGvisorSandbox({ runnerUser })
  const limits = new Map<ChildProcessWithoutNullStreams, number>()
  return {
    spawn(spec) {
      const { memoryBytes, pids, tmpfsBytes } = limitsFor(init, spec)
      const { child } = sandbox.spawn({
        argv: [process.execPath, runnerEntry],
        modelPath: spec.modelPath,
        enginePath: spec.enginePath,
        cpus: cpuQuota(spec.threads),
        memoryBytes,
        pids,
        tmpfsBytes,
      })
      limits.set(child, memoryBytes)
      return child
    },
    modelPathInside: () => GVISOR_MODEL_PATH,
    enginePathInside: () => GVISOR_ENGINE_PATH,
    async exitReason(child) {
      const exit = await sandbox.exited(child)
      const limit = limits.get(child)
      limits.delete(child)
      if (exit?.oomKilled !== true) return undefined
      return `killed: out of memory (limit ${formatBytes(limit ?? 0)})`
    },
    describe: () => ({
      requested: 'gvisor',
      active: 'gvisor',
      enforced: true,
      ...(runnerUser !== undefined && { runnerUser: runnerUser.name }),
    }),
  }
}
