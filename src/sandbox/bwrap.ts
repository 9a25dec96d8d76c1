// The bubblewrap backend: every runner starts in fresh user/pid/net/ipc/uts/mount/cgroup
// namespaces with no capabilities, a cleared environment, a root filesystem that holds
// only read-only binds of the runtime (node, the runner's code, node_modules, system
// libraries), one model file, and a small private tmpfs; behind a seccomp filter
// (seccomp.ts), rlimits and a per-runner cgroup (cgroups.ts).
//
// The process chain, each step exec'ing the next (so the daemon's child pid is bwrap's):
//   sh (joins the runner cgroup as root, race-free: before anything forks)
//   → prlimit (NOFILE, NPROC, CORE=0)
//   → setpriv (runner uid/gid, no groups; parent-death signal so bwrap dies with the daemon)
//   → bwrap (namespaces, binds, seccomp) → landlock-exec (Landlock ruleset) → node runner
//
// Landlock stacks on the binds: landlock-exec (landlock.ts, a tiny C helper the setup
// compiles; Node has no syscall access) runs inside the sandbox after bwrap's mounts (a
// restricted process may not mount) and before node. It allows read+execute beneath the
// runtime, the system libraries, /proc and the model's file (a rule on the inherited fd's
// file), read/write beneath /tmp and /dev, and denies every other file access, TCP bind
// and connect, and abstract unix sockets and signals out of the sandbox. Where the helper
// cannot be built (no compiler) or the kernel has no Landlock the sandbox runs without it;
// `landlock` says so and the doctor reports it.

import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { accessSync, closeSync, constants, existsSync, lstatSync, openSync, readlinkSync } from 'node:fs'
import { delimiter, dirname, join, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SubstrateError } from '../errors.ts'
import { runnerEntry, type SpawnRunner } from '../runtime/spawn.ts'
import { type CgroupSupport, createRunnerCgroup, detectCgroups, type RunnerCgroup } from './cgroups.ts'
import { buildLandlockHelper } from './landlock.ts'
import type { RunnerUser } from './runner-user.ts'
import { seccompFilterBytes } from './seccomp.ts'

/** Where the one model file appears inside the sandbox: the runner's `load` must use it. */
export const SANDBOX_MODEL_PATH = '/model/model.gguf'
/** Where the llama-server binary appears inside the sandbox (engine.ts), when the runner gets one. */
export const SANDBOX_ENGINE_PATH = '/engine/llama-server'
// fds the wrapper chain passes to bwrap (0-2 are the runner's JSON-lines stdio)
const SECCOMP_FD = 3
const MODEL_FD = 4
const ENGINE_FD = 5

export interface BwrapInit {
  /** required when this process is root: runners never keep uid 0 */
  runnerUser?: RunnerUser
  memoryBytes: number
  pids: number
  tmpfsBytes: number
  /** open files per runner (RLIMIT_NOFILE) */
  nofile?: number
  /** detected once per sandbox when not given */
  cgroups?: CgroupSupport
  /** false: no Landlock even where the helper and the kernel have it (default true) */
  landlock?: boolean
}

/** Whether runners get a Landlock ruleset, and the kernel's ABI when they do. */
export type LandlockStatus =
  | { enforced: true; abi: number; helper: string }
  | { enforced: false; reason: string }

export interface SandboxSpawnSpec {
  /** absolute program path and its arguments, as seen inside the sandbox */
  argv: string[]
  /** the one model file the sandbox sees, at SANDBOX_MODEL_PATH */
  modelPath?: string
  /**
   * llama-server, at SANDBOX_ENGINE_PATH. Opened by the daemon and reached through the
   * inherited fd, like the model: the runner account needs no path to it (a build under
   * root's home); the runner passes the fd on to the server it execs.
   */
  enginePath?: string
  /** more host paths bound read-only at the same path (probe scripts, doctor tools) */
  readOnlyBinds?: string[]
  /** host paths bound read-only but left out of the Landlock allow-list (probes of Landlock) */
  unlistedBinds?: string[]
  /** CPU quota in cores; 0 or absent = none */
  cpus?: number
}

export interface SandboxExit {
  code: number | null
  signal: NodeJS.Signals | null
  /** the cgroup's OOM killer fired: the runner asked for more than memoryBytes */
  oomKilled: boolean
}

export interface SandboxedProcess {
  child: ChildProcessWithoutNullStreams
  cgroup: RunnerCgroup | undefined
  /** resolves after exit, once the cgroup is gone */
  exited: Promise<SandboxExit>
}

export interface Sandbox {
  readonly cgroups: CgroupSupport
  readonly landlock: LandlockStatus
  spawn(spec: SandboxSpawnSpec): SandboxedProcess
}

/** Finds a system tool by absolute path; the daemon's PATH may be empty under a service manager. */
export function findTool(name: string): string | undefined {
  const dirs = [
    ...(process.env.PATH ?? '').split(delimiter),
    '/usr/local/bin',
    '/usr/bin',
    '/bin',
    '/usr/sbin',
    '/sbin',
  ]
  for (const dir of dirs.filter((d) => d.startsWith('/'))) {
    try {
      accessSync(join(dir, name), constants.X_OK)
      return join(dir, name)
    } catch {}
  }
  return undefined
}

function requireTool(name: string, pkg: string): string {
  const path = findTool(name)
  if (path !== undefined) return path
  throw new SubstrateError('E_SANDBOX_UNAVAILABLE', `${name} is not installed: runners cannot be sandboxed`, {
    hint: `install it as root: apt-get install -y ${pkg} (or dnf install -y ${pkg})`,
  })
}

/** The read-only runtime a runner needs: node, the code that holds the runner, node_modules. */
export function runtimeBinds(): string[] {
  const codeDir = dirname(dirname(runnerEntry)) // src/ or dist/
  const root = dirname(codeDir)
  const llama = fileURLToPath(import.meta.resolve('node-llama-cpp'))
  const at = llama.lastIndexOf(`${sep}node_modules${sep}`)
  if (at < 0) throw new Error(`node-llama-cpp resolved outside node_modules: ${llama}`)
  const binds = [codeDir, llama.slice(0, at + `${sep}node_modules`.length)]
  // package.json says "type": "module" for the runner's .ts/.js files
  if (existsSync(join(root, 'package.json'))) binds.push(join(root, 'package.json'))
  if (!binds.some((b) => process.execPath.startsWith(`${b}${sep}`))) binds.push(process.execPath)
  return binds
}

/** System libraries for node and the llama.cpp .so files; /lib* are often symlinks into /usr. */
function systemArgs(): string[] {
  const args: string[] = []
  for (const dir of ['/usr/lib', '/usr/lib64', '/usr/lib32'])
    if (existsSync(dir)) args.push('--ro-bind', dir, dir)
  for (const dir of ['/lib', '/lib64', '/lib32']) {
    if (!existsSync(dir)) continue
    if (lstatSync(dir).isSymbolicLink()) args.push('--symlink', readlinkSync(dir), dir)
    else args.push('--ro-bind', dir, dir)
  }
  return args
}

/**
 * Asks the helper for the kernel's Landlock ABI (one short exec per sandbox). The setup
 * builds the helper; where it did not run, this builds it once (~0.3 s), failing soft.
 */
export function detectLandlock(): LandlockStatus {
  const built = buildLandlockHelper()
  if (!built.ok) {
    return { enforced: false, reason: `the landlock-exec helper is not built: ${built.reason}` }
  }
  const helper = built.path
  const r = spawnSync(helper, ['--abi'], { encoding: 'utf8', timeout: 5000 })
  const abi = Number(r.stdout?.trim())
  if (r.status !== 0 || !Number.isInteger(abi)) {
    return {
      enforced: false,
      reason: `${helper} --abi failed: ${(r.stderr || r.error?.message || '').trim()}`,
    }
  }
  if (abi < 1) return { enforced: false, reason: 'the kernel has no Landlock' }
  return { enforced: true, abi, helper }
}

/** What landlock-exec may reach: the binds read-only (but for unlisted ones), /tmp and /dev read/write. */
function landlockArgs(helper: string, readOnly: string[], model: boolean, engine: boolean): string[] {
  const system = ['/usr/lib', '/usr/lib64', '/usr/lib32', '/lib', '/lib64', '/lib32', '/proc']
  return [
    ...[helper, '--ro', ...system, ...readOnly, ...(model ? [SANDBOX_MODEL_PATH] : [])],
    ...(engine ? [SANDBOX_ENGINE_PATH] : []),
    ...['--rw', '/tmp', '/dev', '--'],
  ]
}

let sequence = 0

export function createSandbox(init: BwrapInit): Sandbox {
  const bwrap = requireTool('bwrap', 'bubblewrap')
  const setpriv = requireTool('setpriv', 'util-linux')
  const prlimit = requireTool('prlimit', 'util-linux')
  const asRoot = process.getuid?.() === 0
  if (asRoot && init.runnerUser === undefined) {
    throw new SubstrateError('E_SANDBOX_UNAVAILABLE', 'refusing to run a runner as root', {
      hint: 'start the daemon as an unprivileged user, or let it create the substrate-runner account',
    })
  }
  const cgroups = init.cgroups ?? detectCgroups()
  const seccomp = seccompFilterBytes()
  const system = systemArgs()
  const runtime = runtimeBinds()
  const landlock: LandlockStatus =
    init.landlock === false ? { enforced: false, reason: 'turned off for this sandbox' } : detectLandlock()

  function commandChain(spec: SandboxSpawnSpec, cgroup: RunnerCgroup | undefined): string[] {
    const listed = [...runtime, ...(spec.readOnlyBinds ?? [])]
    const helper = landlock.enforced ? [landlock.helper] : []
    const binds = [...listed, ...(spec.unlistedBinds ?? []), ...helper].flatMap((p) => ['--ro-bind', p, p])
    const restrict = landlock.enforced
      ? landlockArgs(landlock.helper, listed, spec.modelPath !== undefined, spec.enginePath !== undefined)
      : []
    const model =
      spec.modelPath === undefined
        ? []
        : ['--dir', '/model', '--symlink', `/proc/self/fd/${MODEL_FD}`, SANDBOX_MODEL_PATH]
    const engine =
      spec.enginePath === undefined
        ? []
        : ['--dir', '/engine', '--symlink', `/proc/self/fd/${ENGINE_FD}`, SANDBOX_ENGINE_PATH]
    const sandboxArgs = [
      ...['--unshare-all', '--unshare-user', '--disable-userns', '--die-with-parent', '--new-session'],
      ...['--cap-drop', 'ALL', '--clearenv', '--hostname', 'substrate-runner'],
      ...['--setenv', 'PATH', '/usr/bin:/bin', '--setenv', 'HOME', '/tmp', '--setenv', 'TMPDIR', '/tmp'],
      // the tmpfs goes first: binds of a project that lives under /tmp (a CI clone) must land
      // on top of it, not be hidden beneath it
      ...['--proc', '/proc', '--dev', '/dev', '--size', String(init.tmpfsBytes), '--tmpfs', '/tmp'],
      ...system,
      ...binds,
      ...model,
      ...engine,
      // bwrap's own root and /dev are writable tmpfs mounts: seal them once populated
      ...['--remount-ro', '/dev', '--remount-ro', '/'],
      ...['--seccomp', String(SECCOMP_FD), '--chdir', '/tmp', '--'],
      ...restrict,
      ...spec.argv,
    ]
    const user = init.runnerUser
    const privs = user === undefined ? [] : [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups']
    // NPROC counts every process of the uid: a per-runner bound only where no cgroup does it,
    // and only for the dedicated account (for the daemon's own uid it would count the daemon)
    const nproc = user === undefined ? [] : [`--nproc=${cgroup === undefined ? init.pids : init.pids * 16}`]
    const nofile = init.nofile ?? 1024
    return [
      ...[prlimit, `--nofile=${nofile}`, '--core=0', ...nproc, '--'],
      ...[setpriv, ...privs, '--pdeathsig', 'KILL', '--', bwrap, ...sandboxArgs],
    ]
  }

  function spawnSandboxed(spec: SandboxSpawnSpec): SandboxedProcess {
    // the model is opened here, by the daemon, and reached inside through the inherited fd:
    // the runner account needs no path to the daemon's (private) model store
    const modelFd = spec.modelPath === undefined ? 'ignore' : openSync(spec.modelPath, 'r')
    let engineFd: number | 'ignore' = 'ignore'
    let cgroup: RunnerCgroup | undefined
    let child: ChildProcessWithoutNullStreams
    try {
      const name = `runner-${process.pid}-${++sequence}-${randomBytes(3).toString('hex')}`
      const limits = { memoryBytes: init.memoryBytes, pids: init.pids, cpus: spec.cpus ?? 0 }
      cgroup = cgroups.version === 0 ? undefined : createRunnerCgroup(cgroups, name, limits)
      if (spec.enginePath !== undefined) engineFd = openSync(spec.enginePath, 'r')
      const chain = commandChain(spec, cgroup)
      const [command, ...args] =
        cgroup === undefined
          ? chain
          : ['/bin/sh', '-c', JOIN_CGROUP, 'substrate-cgroup-join', ...cgroup.procsFiles, '--', ...chain]
      child = spawn(command ?? prlimit, args, {
        stdio: ['pipe', 'pipe', 'pipe', 'pipe', modelFd, engineFd],
        env: { PATH: '/usr/bin:/bin' },
      }) as ChildProcessWithoutNullStreams
    } catch (err) {
      void cgroup?.remove()
      throw err
    } finally {
      if (typeof modelFd === 'number') closeSync(modelFd)
      if (typeof engineFd === 'number') closeSync(engineFd)
    }
    const filterPipe = child.stdio[SECCOMP_FD]
    if (filterPipe !== null && filterPipe !== undefined && 'end' in filterPipe) {
      filterPipe.on('error', () => {}) // bwrap gone before reading: the exit says why
      filterPipe.end(seccomp)
    }
    const group = cgroup
    const exited = new Promise<SandboxExit>((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        const oomKilled = (group?.oomKills() ?? 0) > 0
        const done = () => resolve({ code, signal, oomKilled })
        if (group === undefined) done()
        else group.remove().then(done, done)
      }
      child.once('exit', finish)
      // a spawn that fails outright (EAGAIN, ENOMEM) emits 'error' and no 'exit'
      child.once('error', () => {
        if (child.pid === undefined) finish(null, null)
      })
    })
    exits.set(child, exited)
    return { child, cgroup, exited }
  }

  return { cgroups, landlock, spawn: spawnSandboxed }
}

// Writes its own pid into each cgroup.procs given before `--`, then execs the rest.
export const JOIN_CGROUP =
  'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'

const exits = new WeakMap<ChildProcessWithoutNullStreams, Promise<SandboxExit>>()

/** How a sandboxed child ended (OOM included), for children a SpawnRunner returned. */
export function sandboxExit(child: ChildProcessWithoutNullStreams): Promise<SandboxExit> | undefined {
  return exits.get(child)
}

/** A SpawnRunner for the runtime: the runner, sandboxed; its `load` must name SANDBOX_MODEL_PATH. */
export function createBwrapSpawner(init: BwrapInit): SpawnRunner {
  const sandbox = createSandbox(init)
  return (spec) =>
    sandbox.spawn({ argv: [process.execPath, runnerEntry], modelPath: spec.modelPath, cpus: spec.threads })
      .child
}
