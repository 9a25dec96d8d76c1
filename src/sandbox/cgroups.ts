// Per-runner cgroups: a memory ceiling (the OOM killer takes the runner, not the daemon or
// the host), a CPU quota matching the runner's threads, and a pids ceiling (fork bombs).
//
// The runner joins its cgroup itself before it execs into the sandbox (see bwrap.ts): a
// pid added from outside after spawn would race with the children it already forked.
//
// v2 is used where its controllers can be enabled for a `substrate` group at the root of
// the hierarchy (a root daemon on a systemd host); v1 otherwise (this machine). A non-root
// daemon with a systemd-delegated v2 subtree is not handled yet (TODO: it needs the daemon
// to move itself into a leaf first, because of v2's no-internal-processes rule).

import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

export type CgroupSupport =
  | { version: 2; group: string }
  | { version: 1; memory: string; cpu: string; pids: string }
  | { version: 0; reason: string }

export interface CgroupLimits {
  memoryBytes: number
  pids: number
  /** CPU quota in cores; 0 = no quota */
  cpus: number
}

export interface RunnerCgroup {
  /** the cgroup.procs files a process writes its pid into to join */
  readonly procsFiles: string[]
  /** how many times the OOM killer fired inside this group */
  oomKills(): number
  /** kills whatever is left inside and removes the directories */
  remove(): Promise<void>
}

const CPU_PERIOD_US = 100_000
// the scheduling weight of one nice-0 task: cgroup v1 cpu.shares, v2 cpu.weight
const NICE_0_SHARES = 1024
const NICE_0_WEIGHT = 100
const GROUP = 'substrate'

interface Mount {
  path: string
  type: string
  options: string[]
}

function readMounts(): Mount[] {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f.length >= 4)
    .map((f) => ({ path: f[1] ?? '', type: f[2] ?? '', options: (f[3] ?? '').split(',') }))
}

/** Finds a cgroup hierarchy this process can create runner groups in, probing by mkdir. */
export function detectCgroups(): CgroupSupport {
  const mounts = readMounts()
  const reasons: string[] = []
  const v2 = mounts.find((m) => m.type === 'cgroup2')
  if (v2 !== undefined) {
    const controllers = readOr(join(v2.path, 'cgroup.controllers'), '').split(/\s+/)
    const missing = ['memory', 'pids', 'cpu'].filter((c) => !controllers.includes(c))
    if (missing.length === 0) {
      try {
        const group = join(v2.path, GROUP)
        mkdirSync(group, { recursive: true })
        writeFileSync(join(group, 'cgroup.subtree_control'), '+memory +pids +cpu')
        try {
          writeFileSync(
            join(group, 'cpu.weight'),
            String(Math.min(10_000, NICE_0_WEIGHT * availableParallelism())),
          )
        } catch {} // only where the root delegates cpu to its children
        sweepStaleGroups([group])
        return { version: 2, group }
      } catch (err) {
        reasons.push(`cgroup v2 at ${v2.path}: ${(err as Error).message}`)
      }
    } else {
      reasons.push(`cgroup v2 at ${v2.path} lacks ${missing.join(', ')}`)
    }
  }
  const v1 = (name: string) => mounts.find((m) => m.type === 'cgroup' && m.options.includes(name))?.path
  const memory = v1('memory')
  const cpu = v1('cpu')
  const pids = v1('pids')
  if (memory === undefined || cpu === undefined || pids === undefined) {
    reasons.push('no cgroup v1 memory, cpu and pids controllers mounted')
    return { version: 0, reason: reasons.join('; ') }
  }
  try {
    for (const root of [memory, cpu, pids]) mkdirSync(join(root, GROUP), { recursive: true })
    // a group is ONE scheduling entity against every task outside it: weigh the parent like
    // all cores' worth of tasks, or a busy host would starve runners more than plain processes
    writeFileSync(join(cpu, GROUP, 'cpu.shares'), String(NICE_0_SHARES * availableParallelism()))
    const support = {
      version: 1,
      memory: join(memory, GROUP),
      cpu: join(cpu, GROUP),
      pids: join(pids, GROUP),
    } as const
    sweepStaleGroups([support.memory, support.cpu, support.pids])
    return support
  } catch (err) {
    reasons.push(`cgroup v1: ${(err as Error).message} (the daemon needs root or a delegated cgroup)`)
    return { version: 0, reason: reasons.join('; ') }
  }
}

/**
 * Removes the empty runner groups of daemons that are gone (`runner-<daemon pid>-…`): a daemon
 * killed outright cannot remove its own. A group with a live process in it is left alone
 * (rmdir refuses), and so is any group whose daemon pid is alive.
 */
function sweepStaleGroups(parents: string[]): void {
  for (const parent of parents) {
    for (const name of readdirSync(parent)) {
      const pid = Number(/^runner-(\d+)-/.exec(name)?.[1])
      if (!Number.isInteger(pid) || pid === process.pid || isAlive(pid)) continue
      try {
        rmdirSync(join(parent, name))
      } catch {}
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function readOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return fallback
  }
}

function counter(text: string, key: string): number {
  const match = new RegExp(`^${key} (\\d+)$`, 'm').exec(text)
  return match === null ? 0 : Number(match[1])
}

/** Creates the runner's group(s) with limits written; the caller adds the pid. */
export function createRunnerCgroup(support: CgroupSupport, name: string, limits: CgroupLimits): RunnerCgroup {
  if (support.version === 0) throw new Error(`cgroups unavailable: ${support.reason}`)
  if (support.version === 2) {
    const dir = join(support.group, name)
    mkdirSync(dir)
    writeFileSync(join(dir, 'memory.max'), String(limits.memoryBytes))
    // swap would let a memory bomb outlive its ceiling by paging the host to death
    if (existsSync(join(dir, 'memory.swap.max'))) writeFileSync(join(dir, 'memory.swap.max'), '0')
    writeFileSync(join(dir, 'pids.max'), String(limits.pids))
    const quota = limits.cpus > 0 ? String(Math.round(limits.cpus * CPU_PERIOD_US)) : 'max'
    writeFileSync(join(dir, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`)
    writeFileSync(
      join(dir, 'cpu.weight'),
      String(Math.min(10_000, NICE_0_WEIGHT * Math.max(1, Math.ceil(limits.cpus)))),
    )
    return handle([dir], () => counter(readOr(join(dir, 'memory.events'), ''), 'oom_kill'))
  }
  const memory = join(support.memory, name)
  const cpu = join(support.cpu, name)
  const pids = join(support.pids, name)
  for (const dir of [memory, cpu, pids]) mkdirSync(dir)
  writeFileSync(join(memory, 'memory.limit_in_bytes'), String(limits.memoryBytes))
  // memsw only exists with swap accounting; it must be written after the plain limit
  const memsw = join(memory, 'memory.memsw.limit_in_bytes')
  if (existsSync(memsw)) writeFileSync(memsw, String(limits.memoryBytes))
  writeFileSync(join(pids, 'pids.max'), String(limits.pids))
  writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US))
  const quota = limits.cpus > 0 ? Math.round(limits.cpus * CPU_PERIOD_US) : -1
  writeFileSync(join(cpu, 'cpu.cfs_quota_us'), String(quota))
  // weigh the runner like its threads would weigh as plain processes (see detectCgroups)
  writeFileSync(join(cpu, 'cpu.shares'), String(NICE_0_SHARES * Math.max(1, Math.ceil(limits.cpus))))
  return handle([memory, cpu, pids], () =>
    counter(readOr(join(memory, 'memory.oom_control'), ''), 'oom_kill'),
  )
}

function handle(dirs: string[], oomKills: () => number): RunnerCgroup {
  let removed: Promise<void> | undefined
  return {
    procsFiles: dirs.map((d) => join(d, 'cgroup.procs')),
    oomKills,
    remove() {
      removed ??= removeGroups(dirs)
      return removed
    },
  }
}

async function removeGroups(dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    // a group can only be removed once empty; anything still inside is a leftover runner
    for (let attempt = 0; attempt < 50; attempt++) {
      for (const pid of readOr(join(dir, 'cgroup.procs'), '').split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL')
        } catch {}
      }
      try {
        rmdirSync(dir)
        break
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') break
        if (attempt === 49) throw err
        await sleep(20)
      }
    }
  }
}
