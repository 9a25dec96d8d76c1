// The gVisor backend: each runner runs in its own runsc sandbox (a user-space kernel that
// answers the runner's syscalls itself), started from a generated OCI bundle whose root is
// an empty read-only directory plus read-only binds of exactly the runtime and the one
// model file, a size-limited /tmp, no network (--network=none) and the ptrace platform (the
// kvm platform did not start here). The whole runsc process tree joins a per-runner cgroup
// first, as bwrap's chain does, so memory, CPU and pids are bounded on the host.
//
// Cost (PLATFORM-FACTS): Node starts inside in ~0.3 s; decoding at 1 thread runs at ~0.8×
// native, at 2 threads ~0.2× (every futex goes through ptrace). It is the stronger wall,
// not the default.

import { type ChildProcessWithoutNullStreams, execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { SubstrateError } from '../errors.ts'
import { findTool, JOIN_CGROUP, runtimeBinds, type SandboxExit } from './bwrap.ts'
import { createRunnerCgroup, detectCgroups, type RunnerCgroup } from './cgroups.ts'
import type { RunnerUser } from './runner-user.ts'

const run = promisify(execFile)

/** Where the model file appears inside a gVisor runner. */
export const GVISOR_MODEL_PATH = '/model/model.gguf'
/** Where the llama-server binary appears inside a gVisor runner (engine.ts). */
export const GVISOR_ENGINE_PATH = '/engine/llama-server'

export interface GvisorSpawnSpec {
  argv: string[]
  modelPath?: string
  /** the llama-server binary on the host, bound read-only at GVISOR_ENGINE_PATH */
  enginePath?: string
  cpus?: number
  memoryBytes: number
  pids: number
  tmpfsBytes: number
}

export interface GvisorSandbox {
  spawn(spec: GvisorSpawnSpec): { child: ChildProcessWithoutNullStreams; exited: Promise<SandboxExit> }
  exited(child: ChildProcessWithoutNullStreams): Promise<SandboxExit> | undefined
}

export function runscFlags(stateRoot: string): string[] {
  const rootless = process.getuid?.() !== 0
  return [
    '--root',
    stateRoot,
    '--network=none',
    '--platform=ptrace',
    '--ignore-cgroups', // the runner's own cgroup (below) bounds the whole runsc tree
    ...(rootless ? ['--rootless'] : []),
  ]
}

function bind(path: string, destination = path) {
  return { destination, type: 'bind', source: path, options: ['rbind', 'ro'] }
}

function ociSpec(spec: GvisorSpawnSpec, user: RunnerUser | undefined) {
  const system = ['/usr/lib', '/usr/lib64', '/lib', '/lib64'].filter((d) => existsSync(d))
  return {
    ociVersion: '1.0.0',
    process: {
      user: user === undefined ? { uid: 0, gid: 0 } : { uid: user.uid, gid: user.gid },
      args: spec.argv,
      env: ['PATH=/usr/bin:/bin', 'HOME=/tmp', 'TMPDIR=/tmp'],
      cwd: '/tmp',
      noNewPrivileges: true,
      capabilities: {},
      rlimits: [
        { type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 },
        { type: 'RLIMIT_CORE', hard: 0, soft: 0 },
      ],
    },
    root: { path: 'rootfs', readonly: true },
    hostname: 'substrate-runner',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: [`size=${spec.tmpfsBytes}`] },
      ...system.map((d) => bind(d)),
      ...runtimeBinds().map((p) => bind(p)),
      ...(spec.modelPath === undefined ? [] : [bind(spec.modelPath, GVISOR_MODEL_PATH)]),
      ...(spec.enginePath === undefined ? [] : [bind(spec.enginePath, GVISOR_ENGINE_PATH)]),
    ],
    linux: {
      namespaces: ['pid', 'network', 'ipc', 'uts', 'mount'].map((type) => ({ type })),
    },
  }
}

export async function createGvisorSandbox(init: { runnerUser?: RunnerUser }): Promise<GvisorSandbox> {
  const found = findTool('runsc')
  if (found === undefined) {
    throw new SubstrateError('E_SANDBOX_UNAVAILABLE', 'runsc (gVisor) is not installed', {
      hint: 'as root: apt-get install -y runsc, or use sandbox.backend = bwrap',
    })
  }
  const runsc: string = found
  const setpriv = findTool('setpriv')
  const cgroups = detectCgroups()
  // one state directory per host user, shared by daemons (container ids are unique); each
  // runner's bundle and state are removed when it exits
  const stateRoot = join(tmpdir(), `substrate-runsc-${process.getuid?.() ?? 0}`)
  mkdirSync(stateRoot, { recursive: true, mode: 0o700 })
  const flags = runscFlags(stateRoot)
  // a sandbox that cannot start fails here, with runsc's own words
  try {
    await run(runsc, [...flags, 'do', 'true'], { timeout: 30_000, cwd: '/tmp' })
  } catch (err) {
    const e = err as { stderr?: string; message: string }
    throw new SubstrateError(
      'E_SANDBOX_UNAVAILABLE',
      `runsc ${flags.join(' ')} do true failed: ${(e.stderr ?? '').trim() || e.message}`,
    )
  }
  const exits = new WeakMap<ChildProcessWithoutNullStreams, Promise<SandboxExit>>()

  function spawnSandboxed(spec: GvisorSpawnSpec) {
    const id = `runner-${process.pid}-${randomBytes(4).toString('hex')}`
    const bundle = join(stateRoot, `${id}.bundle`)
    mkdirSync(join(bundle, 'rootfs'), { recursive: true })
    writeFileSync(join(bundle, 'config.json'), JSON.stringify(ociSpec(spec, init.runnerUser)))
    let cgroup: RunnerCgroup | undefined
    const limits = { memoryBytes: spec.memoryBytes, pids: spec.pids, cpus: spec.cpus ?? 0 }
    cgroup = cgroups.version === 0 ? undefined : createRunnerCgroup(cgroups, id, limits)
    // parent-death signal: runsc goes when the daemon goes
    const chain = [
      ...(setpriv === undefined ? [] : [setpriv, '--pdeathsig', 'KILL', '--']),
      ...[runsc, ...flags, 'run', '--bundle', bundle, id],
    ]
    const [command, ...args] =
      cgroup === undefined
        ? chain
        : ['/bin/sh', '-c', JOIN_CGROUP, 'substrate-cgroup-join', ...cgroup.procsFiles, '--', ...chain]
    let child: ChildProcessWithoutNullStreams
    try {
      child = spawn(command ?? runsc, args, { stdio: 'pipe', env: { PATH: '/usr/bin:/bin' } })
    } catch (err) {
      void cgroup?.remove()
      rmSync(bundle, { recursive: true, force: true })
      throw err
    }
    const group = cgroup
    const exited = new Promise<SandboxExit>((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        const oomKilled = (group?.oomKills() ?? 0) > 0
        const cleanup = async () => {
          await group?.remove().catch(() => {})
          await run(runsc, [...flags, 'delete', '--force', id]).catch(() => {})
          rmSync(bundle, { recursive: true, force: true })
        }
        void cleanup().then(() => resolve({ code, signal, oomKilled }))
      }
      child.once('exit', finish)
      child.once('error', () => {
        if (child.pid === undefined) finish(null, null)
      })
    })
    exits.set(child, exited)
    return { child, exited }
  }

  return { spawn: spawnSandboxed, exited: (child) => exits.get(child) }
}
