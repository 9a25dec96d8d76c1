// `substrate doctor`'s sandbox section: each isolation layer is PROBED, never assumed. A
// trivial process is started in the same sandbox runners get and reports what it sees
// from the inside; the daemon checks the outside (host uid, cgroup membership and limits).

import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { type BwrapInit, createSandbox, findTool, type LandlockStatus } from './bwrap.ts'
import type { CgroupSupport } from './cgroups.ts'
import { LANDLOCK_SOURCE } from './landlock.ts'
import { ensureRunnerUser } from './runner-user.ts'

const run = promisify(execFile)

export interface LayerReport {
  layer: string
  enforced: boolean
  detail: string
  fix?: string
}

const MiB = 2 ** 20
const PROBE_LIMITS = { memoryBytes: 256 * MiB, pids: 64, tmpfsBytes: 8 * MiB, nofile: 1024 }
// bound into the probe's sandbox but left out of the Landlock allow-list: a world-readable
// file, so that only Landlock can make the read fail (with EACCES)
const LANDLOCK_PROBE_PATH = '/etc/passwd'

// Runs inside the sandbox: prints what it sees, then waits for stdin to close so that the
// daemon can look at it from the outside while it is alive.
const INSIDE = `
const fs = require('node:fs')
const read = (p) => { try { return fs.readFileSync(p, 'utf8') } catch (e) { return 'ERR ' + e.code } }
const tryWrite = (p) => { try { fs.writeFileSync(p, 'x'); return 'ok' } catch (e) { return e.code } }
const socket = require('node:net').connect(9, '127.0.0.1')
socket.on('connect', () => { report('connected') })
socket.on('error', (e) => report(e.code))
function report(tcp) {
  process.stdout.write(JSON.stringify({
    pid: process.pid, tcp, status: read('/proc/self/status'), uidMap: read('/proc/self/uid_map'),
    netDev: read('/proc/net/dev'), limits: read('/proc/self/limits'),
    shadow: read('/etc/shadow').startsWith('ERR') ? read('/etc/shadow') : 'READABLE', writeRoot: tryWrite('/substrate-doctor'),
    unlisted: read(${JSON.stringify(LANDLOCK_PROBE_PATH)}).startsWith('ERR') ? read(${JSON.stringify(LANDLOCK_PROBE_PATH)}) : 'READABLE',
    writeTmp: tryWrite('/tmp/substrate-doctor'),
  }) + '\\n')
  process.stdin.resume()
}`

interface Inside {
  pid: number
  tcp: string
  status: string
  uidMap: string
  netDev: string
  limits: string
  shadow: string
  writeRoot: string
  unlisted: string
  writeTmp: string
}

const field = (text: string, name: string) =>
  new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim() ?? ''

export async function probeSandbox(options: { active?: string } = {}): Promise<LayerReport[]> {
  const reports: LayerReport[] = []
  const bwrap = findTool('bwrap')
  if (bwrap === undefined) {
    reports.push({
      layer: 'bubblewrap',
      enforced: false,
      detail: 'bwrap is not installed: runners cannot be sandboxed, so this node serves local requests only',
      fix: 'as root: apt-get install -y bubblewrap (or dnf install -y bubblewrap)',
    })
  } else {
    try {
      reports.push(...(await probeBwrap(bwrap)))
    } catch (err) {
      reports.push({
        layer: 'bubblewrap',
        enforced: false,
        detail: `the probe failed: ${(err as Error).message}`,
      })
    }
  }
  if (!reports.some((r) => r.layer === 'landlock')) reports.push(await probeLandlock())
  reports.push(await probeGvisor(options.active === 'gvisor'))
  return reports
}

async function probeBwrap(bwrap: string): Promise<LayerReport[]> {
  const runnerUser = process.getuid?.() === 0 ? await ensureRunnerUser() : undefined
  const init: BwrapInit = { runnerUser, ...PROBE_LIMITS }
  const sandbox = createSandbox(init)
  const unlistedBinds = existsSync(LANDLOCK_PROBE_PATH) ? [LANDLOCK_PROBE_PATH] : []
  const { child, cgroup, exited } = sandbox.spawn({ argv: [process.execPath, '-e', INSIDE], unlistedBinds })
  let stdout = ''
  let stderr = ''
  child.stderr.on('data', (d) => {
    stderr += d
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
  const line = await new Promise<string | undefined>((resolve) => {
    child.stdout.on('data', (d) => {
      stdout += d
      if (stdout.includes('\n')) resolve(stdout.slice(0, stdout.indexOf('\n')))
    })
    child.once('exit', () => resolve(undefined))
  })
  // the outside view, taken while the probe is alive
  const members = (cgroup?.procsFiles ?? []).map((f) => readFileSync(f, 'utf8').split('\n').filter(Boolean))
  const hostUids = (members[0] ?? []).map((pid) => field(readFileSync(`/proc/${pid}/status`, 'utf8'), 'Uid'))
  const limits = readLimits(cgroup?.procsFiles ?? [])
  child.stdin.end()
  await exited
  clearTimeout(timer)
  if (line === undefined) throw new Error(`the sandboxed probe printed nothing: ${stderr.trim()}`)
  const inside = JSON.parse(line) as Inside
  const version = (await run(bwrap, ['--version'])).stdout

  const interfaces = inside.netDev
    .split('\n')
    .slice(2)
    .map((l) => l.split(':')[0]?.trim())
    .filter(Boolean)
  const realUids = hostUids.map((u) => u.split(/\s+/)[0])
  const reports: LayerReport[] = [
    { layer: 'bubblewrap', enforced: true, detail: version.trim() },
    {
      layer: 'runner-user',
      enforced: realUids.length > 0 && realUids.every((u) => u !== '0'),
      detail: `sandboxed processes run as host uid ${[...new Set(realUids)].join(', ') || '?'}`,
      fix: 'run the daemon as root (it creates substrate-runner) or as an unprivileged user',
    },
    {
      layer: 'user-namespace',
      enforced: !/^\s*0\s+0\s+4294967295/.test(inside.uidMap),
      detail: `uid_map inside: ${inside.uidMap.trim()}`,
    },
    { layer: 'pid-namespace', enforced: inside.pid <= 3, detail: `the probe is pid ${inside.pid} inside` },
    {
      layer: 'network-namespace',
      enforced: interfaces.length === 1 && interfaces[0] === 'lo',
      detail: `interfaces inside: ${interfaces.join(', ')}`,
    },
    {
      layer: 'filesystem',
      enforced: inside.shadow.startsWith('ERR') && inside.writeRoot !== 'ok',
      detail: `reading /etc/shadow: ${inside.shadow.replace('ERR ', '')}; writing /: ${inside.writeRoot}`,
    },
    {
      layer: 'capabilities',
      enforced: /^0+$/.test(field(inside.status, 'CapEff')) && field(inside.status, 'NoNewPrivs') === '1',
      detail: `CapEff ${field(inside.status, 'CapEff')}, NoNewPrivs ${field(inside.status, 'NoNewPrivs')}`,
    },
    {
      layer: 'seccomp',
      enforced: field(inside.status, 'Seccomp') === '2' && inside.tcp === 'EAFNOSUPPORT',
      detail: `Seccomp mode ${field(inside.status, 'Seccomp')}; a TCP socket inside fails with ${inside.tcp}`,
    },
    cgroupReport(sandbox.cgroups, members, limits),
    {
      layer: 'rlimits',
      enforced:
        /^Max core file size\s+0\s/m.test(inside.limits) && /^Max open files\s+1024\s/m.test(inside.limits),
      detail: inside.limits
        .split('\n')
        .filter((l) => /core file|open files|processes/.test(l))
        .map((l) => l.replace(/\s{2,}/g, ' ').trim())
        .join('; '),
    },
    landlockReport(sandbox.landlock, inside, unlistedBinds.length > 0),
  ]
  // a fix is advice for what is missing: drop it where the layer holds
  return reports.map((r) => (r.enforced ? { layer: r.layer, enforced: true, detail: r.detail } : r))
}

/** The limits as the kernel holds them, read back from the runner's group(s). */
function readLimits(procsFiles: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const dir of procsFiles.map((f) => dirname(f))) {
    for (const name of ['memory.limit_in_bytes', 'memory.max', 'pids.max', 'cpu.max']) {
      try {
        out[name] = readFileSync(join(dir, name), 'utf8').trim()
      } catch {}
    }
  }
  return out
}

function cgroupReport(
  support: CgroupSupport,
  members: string[][],
  limits: Record<string, string>,
): LayerReport {
  if (support.version === 0) {
    return {
      layer: 'cgroups',
      enforced: false,
      detail: `no memory, cpu or pids limits: ${support.reason}`,
      fix: 'run the daemon as root, or give it a delegated cgroup v2 subtree (systemd Delegate=yes)',
    }
  }
  const joined = members.length > 0 && members.every((m) => m.length > 0)
  const memory = limits['memory.limit_in_bytes'] ?? limits['memory.max']
  const limited =
    memory === String(PROBE_LIMITS.memoryBytes) && limits['pids.max'] === String(PROBE_LIMITS.pids)
  const where = support.version === 2 ? support.group : support.memory
  const shown = Object.entries(limits).map(([k, v]) => `${k}=${v}`)
  return {
    layer: 'cgroups',
    enforced: joined && limited,
    detail: `v${support.version} under ${where}: ${shown.join(', ')}; the probe ${joined ? 'was' : 'was NOT'} inside its group`,
  }
}

function landlockReport(status: LandlockStatus, inside: Inside, probed: boolean): LayerReport {
  if (!status.enforced) {
    return {
      layer: 'landlock',
      enforced: false,
      detail: `runners get no Landlock ruleset: ${status.reason}`,
      fix: status.reason.includes('not built')
        ? `install a C compiler (apt-get install -y gcc), then node scripts/setup-system.ts compiles ${LANDLOCK_SOURCE}`
        : 'a kernel with Landlock (5.13+, landlock in the lsm= list)',
    }
  }
  return {
    layer: 'landlock',
    enforced: probed && inside.unlisted === 'ERR EACCES' && inside.writeTmp === 'ok',
    detail: probed
      ? `ABI ${status.abi}: reading ${LANDLOCK_PROBE_PATH} (bound, not allowed): ${inside.unlisted.replace('ERR ', '')}; writing /tmp: ${inside.writeTmp}`
      : `ABI ${status.abi}, but ${LANDLOCK_PROBE_PATH} is missing, so the ruleset could not be probed`,
  }
}

/** Only where the bwrap probe could not run: what the kernel offers. */
async function probeLandlock(): Promise<LayerReport> {
  // No syscall access from Node: perl's syscall() asks landlock_create_ruleset for the ABI.
  let detail = 'kernel support unknown (perl is needed to ask the kernel)'
  try {
    const { stdout } = await run('perl', ['-e', 'print syscall(444, 0, 0, 1) . " " . ($! + 0)'])
    const [abi, errno] = stdout.split(' ')
    detail =
      Number(abi) > 0
        ? `the kernel supports Landlock ABI ${abi}`
        : `the kernel has no Landlock (errno ${errno})`
  } catch {}
  return {
    layer: 'landlock',
    enforced: false,
    detail: `${detail}; the ruleset is applied inside the bwrap sandbox, which did not run`,
  }
}

async function probeGvisor(active: boolean): Promise<LayerReport> {
  const runsc = findTool('runsc')
  if (runsc === undefined) {
    return {
      layer: 'gvisor',
      enforced: false,
      detail: 'runsc is not installed',
      fix: 'apt-get install -y runsc',
    }
  }
  const args = ['--network=none', '--platform=ptrace', ...(process.getuid?.() === 0 ? [] : ['--rootless'])]
  const started = performance.now()
  try {
    await run(runsc, [...args, 'do', 'true'], { timeout: 30_000, cwd: '/tmp' })
    const ms = Math.round(performance.now() - started)
    return active
      ? {
          layer: 'gvisor',
          enforced: true,
          detail: `runners run under runsc ${args.join(' ')} (starts in ${ms} ms)`,
        }
      : {
          layer: 'gvisor',
          enforced: false,
          detail: `runsc ${args.join(' ')} do true starts here in ${ms} ms, but runners do not use it`,
          fix: 'set sandbox.backend = gvisor (stronger wall; ~0.8x decode speed at 1 thread, far less at more)',
        }
  } catch (err) {
    const e = err as { stderr?: string; message: string }
    return {
      layer: 'gvisor',
      enforced: false,
      detail: `runsc ${args.join(' ')} do true failed: ${(e.stderr ?? '').trim() || e.message}`,
    }
  }
}

export interface GpuAccess {
  /** GPU device nodes on the host */
  devices: string[]
  /** whether a sandboxed runner can use them */
  usableInSandbox: boolean
  detail: string
}

/** What the GPU can do for a sandboxed runner: today nothing, runners decode on the CPU. */
export function gpuAccess(): GpuAccess {
  const devices = ['/dev/nvidia0', '/dev/nvidiactl', '/dev/kfd', '/dev/dri'].filter((d) => existsSync(d))
  return {
    devices,
    usableInSandbox: false,
    detail:
      devices.length === 0
        ? 'no GPU device on this host: runners decode on the CPU'
        : `the host has ${devices.join(', ')}, but the sandbox binds no device nodes and runners load ` +
          'with gpu: false, so they decode on the CPU (binding the GPU is not implemented yet)',
  }
}
