// The escape suite: real sandboxes, real kernel, a probe script (probe.ts) that tries one
// escape each and reports what happened. These run as root in CI, with runners on the
// unprivileged substrate-runner account; they fail (never skip) when bubblewrap is missing.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import {
  type BwrapInit,
  createSandbox,
  findTool,
  type Sandbox,
  type SandboxExit,
  type SandboxSpawnSpec,
} from '../../src/sandbox/bwrap.ts'
import { buildLandlockHelper } from '../../src/sandbox/landlock.ts'
import { ensureRunnerUser } from '../../src/sandbox/runner-user.ts'
import { DENIED_SYSCALLS, EPERM, hostSeccompArch } from '../../src/sandbox/seccomp.ts'

const PROBE = fileURLToPath(new URL('./probe.ts', import.meta.url))
const PERL = '/usr/bin/perl'
const MiB = 2 ** 20
const LIMITS = { memoryBytes: 256 * MiB, pids: 64, tmpfsBytes: 8 * MiB }
const arch = hostSeccompArch()

let init: BwrapInit
let sandbox: Sandbox

interface ProbeRun {
  result: Record<string, unknown> | undefined
  exit: SandboxExit
  stderr: string
}

async function probe(
  args: string[],
  timeoutMs = 30_000,
  extra: Partial<SandboxSpawnSpec> = {},
  on = sandbox,
) {
  const { child, exited } = on.spawn({
    argv: [process.execPath, PROBE, ...args],
    readOnlyBinds: [PROBE, PERL],
    ...extra,
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => {
    stdout += d
  })
  child.stderr.on('data', (d) => {
    stderr += d
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  const exit = await exited
  clearTimeout(timer)
  const line = stdout.split('\n').find((l) => l.startsWith('{'))
  const run: ProbeRun = { result: line === undefined ? undefined : JSON.parse(line), exit, stderr }
  return run
}

before(async () => {
  assert.ok(findTool('bwrap'), 'bubblewrap is not installed: run `apt-get install -y bubblewrap` as root')
  assert.ok(existsSync(PERL), 'the syscall probes need perl (Debian: perl-base)')
  const built = buildLandlockHelper()
  assert.ok(built.ok, built.ok ? '' : `the Landlock helper must build: ${built.reason}`)
  const runnerUser = process.getuid?.() === 0 ? await ensureRunnerUser() : undefined
  init = { runnerUser, ...LIMITS }
  sandbox = createSandbox(init)
  assert.equal(sandbox.landlock.enforced, true, JSON.stringify(sandbox.landlock))
  assert.notEqual(
    sandbox.cgroups.version,
    0,
    `cgroups are needed for the pids and memory tests: ${JSON.stringify(sandbox.cgroups)}`,
  )
})

describe('the filesystem', () => {
  it('hides /etc/shadow', async () => {
    assert.ok(existsSync('/etc/shadow'), 'the host has /etc/shadow, so this test means something')
    const { result } = await probe(['read', '/etc/shadow'])
    assert.deepEqual(result, { ok: false, code: 'ENOENT' })
  })

  it("hides a key in the daemon's home, even one every user may read", async () => {
    const home = mkdtempSync(join(tmpdir(), 'substrate-escape-'))
    const key = join(home, 'identity.key')
    writeFileSync(key, 'secret', { mode: 0o644 })
    try {
      const { result } = await probe(['read', key])
      assert.deepEqual(result, { ok: false, code: 'ENOENT' })
    } finally {
      rmSync(home, { recursive: true })
    }
  })

  it("cannot read another job's files", async () => {
    const other = sandbox.spawn({ argv: [process.execPath, PROBE, 'plant'], readOnlyBinds: [PROBE] })
    try {
      await new Promise((resolve) => other.child.stdout.once('data', resolve))
      const { result } = await probe(['read', '/tmp/job-secret'])
      assert.deepEqual(result, { ok: false, code: 'ENOENT' })
    } finally {
      other.child.kill('SIGKILL')
      await other.exited
    }
  })

  it('lets the sandbox write to its tmpfs only', async () => {
    assert.deepEqual((await probe(['write', '/tmp/scratch'])).result, { ok: true })
    assert.deepEqual((await probe(['write', '/escaped'])).result, { ok: false, code: 'EROFS' })
    // Next to a bound file the write either fails (EROFS) or, when the project itself lives
    // under /tmp (a CI clone), lands in the sandbox's private tmpfs: never on the host.
    const beside = await probe(['write', `${PROBE}.escaped`])
    assert.equal(existsSync(`${PROBE}.escaped`), false, 'the write must not reach the host')
    if (!PROBE.startsWith('/tmp/')) assert.deepEqual(beside.result, { ok: false, code: 'EROFS' })
  })

  it('stops a disk filler at the tmpfs size with ENOSPC', async () => {
    const { result } = await probe(['filltmp'])
    assert.equal(result?.code, 'ENOSPC')
    assert.ok(Number(result?.mebibytes) <= LIMITS.tmpfsBytes / MiB, JSON.stringify(result))
  })
})

describe('Landlock', () => {
  // /etc/passwd: world-readable, so only Landlock can make a bound copy unreadable
  const bound = { unlistedBinds: ['/etc/passwd'] }

  it('denies a path bound into the sandbox but outside the allow-list with EACCES', async () => {
    assert.deepEqual((await probe(['read', '/etc/passwd'], 30_000, bound)).result, {
      ok: false,
      code: 'EACCES',
    })
    // the same bind without Landlock reads: the ruleset is what stops it
    const plain = createSandbox({ ...init, landlock: false })
    assert.deepEqual((await probe(['read', '/etc/passwd'], 30_000, bound, plain)).result, { ok: true })
  })

  it('denies writes outside /tmp that the mounts allow (/proc/self/comm)', async () => {
    assert.deepEqual((await probe(['write', '/proc/self/comm'])).result, { ok: false, code: 'EACCES' })
    const plain = createSandbox({ ...init, landlock: false })
    assert.deepEqual((await probe(['write', '/proc/self/comm'], 30_000, {}, plain)).result, { ok: true })
    assert.deepEqual((await probe(['write', '/tmp/scratch'])).result, { ok: true })
  })

  it('denies listing directories outside the allow-list (/)', async () => {
    assert.deepEqual((await probe(['read', '/'])).result, { ok: false, code: 'EACCES' })
  })
})

describe('the network', () => {
  let server: Server
  let connections = 0
  before(async () => {
    server = createServer((s) => {
      connections++
      s.destroy()
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  })
  after(() => server.close())

  it("cannot reach a TCP server on the host's loopback", async () => {
    const address = server.address()
    assert.ok(address !== null && typeof address === 'object')
    const { result } = await probe(['tcp', String(address.port)])
    assert.deepEqual(result, { ok: false, code: 'EAFNOSUPPORT' })
    assert.equal(connections, 0)
  })

  it('cannot open a UDP socket', async () => {
    const { result } = await probe(['udp', '53'])
    assert.deepEqual(result, { ok: false, code: 'EAFNOSUPPORT' })
  })
})

describe('syscalls', () => {
  const nr = (name: keyof typeof DENIED_SYSCALLS) => DENIED_SYSCALLS[name][arch]

  it('runs perl syscalls at all (getpid succeeds)', async () => {
    const { result } = await probe(['perl', `syscall(${arch === 'x64' ? 39 : 172})`])
    assert.deepEqual(result, { ok: true })
  })

  // (perl's syscall needs string arguments in variables: it may write into them)
  // each of these would succeed for an ordinary process (traceme, unshare(0), keyctl get id)
  // or fail with another errno without the filter: EPERM shows the filter answered
  const denied: Array<[string, string]> = [
    ['ptrace(PTRACE_TRACEME)', `syscall(${nr('ptrace')}, 0, 0, 0, 0)`],
    ['mount(tmpfs)', `syscall(${nr('mount')}, my $s = "none", my $t = "/tmp", my $f = "tmpfs", 0, 0)`],
    ['unshare(0)', `syscall(${nr('unshare')}, 0)`],
    ['unshare(CLONE_NEWUSER)', `syscall(${nr('unshare')}, 0x10000000)`],
    ['clone(CLONE_NEWNET)', `syscall(${arch === 'x64' ? 56 : 220}, 0x40000000 | 17, 0, 0, 0, 0)`],
    ['keyctl(GET_KEYRING_ID)', `syscall(${nr('keyctl')}, 0, -3, 0)`],
    ['finit_module', `syscall(${nr('finit_module')}, 0, my $e = "", 0)`],
    ['bpf', `syscall(${nr('bpf')}, 0, 0, 0)`],
  ]
  for (const [name, expr] of denied) {
    it(`denies ${name} with EPERM`, async () => {
      const { result } = await probe(['perl', expr])
      assert.deepEqual(result, { ok: false, errno: EPERM })
    })
  }
})

describe('resource limits', () => {
  it('bounds a fork bomb by the pids limit', async () => {
    const { result } = await probe(['forkbomb'])
    assert.equal(result?.code, 'EAGAIN', JSON.stringify(result))
    assert.ok(Number(result?.spawned) < LIMITS.pids, JSON.stringify(result))
  })

  it('kills a memory bomb with the OOM killer and reports it', async () => {
    const { result, exit } = await probe(['membomb'])
    assert.equal(result, undefined, 'the bomb must not finish')
    assert.equal(exit.oomKilled, true, JSON.stringify(exit))
  })
})

describe('lifetime', () => {
  it('refuses to start a runner as root', {
    skip: process.getuid?.() !== 0 && 'only meaningful as root',
  }, () => {
    assert.throws(() => createSandbox({ ...LIMITS }), { code: 'E_SANDBOX_UNAVAILABLE' })
  })

  it('leaves no cgroup behind when the model cannot be opened', () => {
    const before = sandboxGroups()
    assert.throws(() => sandbox.spawn({ argv: [process.execPath], modelPath: '/nonexistent.gguf' }), {
      code: 'ENOENT',
    })
    assert.deepEqual(sandboxGroups(), before)
  })

  it('leaves nothing running once a stopped job is gone, not even a detached grandchild', async () => {
    const { child, cgroup, exited } = sandbox.spawn({
      argv: [process.execPath, PROBE, 'orphan'],
      readOnlyBinds: [PROBE, PERL],
    })
    await new Promise<void>((resolve) => {
      let out = ''
      child.stdout.on('data', (d) => {
        out += d
        if (out.includes('"orphan"')) resolve()
      })
    })
    const hostPids = (cgroup?.procsFiles ?? []).flatMap((f) =>
      readFileSync(f, 'utf8').split('\n').filter(Boolean).map(Number),
    )
    assert.ok(hostPids.length >= 4, `bwrap, its init, the probe and the orphan: ${hostPids}`)
    child.kill('SIGKILL') // what stopping a runner that ignores `shutdown` comes to
    await exited
    assert.deepEqual(hostPids.filter(alive), [])
  })

  it('kills the sandbox within 2 s when the process that spawned it dies', async () => {
    const script = `
      import { createSandbox } from ${JSON.stringify(join(dirname(PROBE), '../../src/sandbox/bwrap.ts'))}
      const p = createSandbox(JSON.parse(process.env.SANDBOX_INIT)).spawn({
        argv: [process.execPath, ${JSON.stringify(PROBE)}, 'sleep'], readOnlyBinds: [${JSON.stringify(PROBE)}],
      })
      console.log(JSON.stringify(p.cgroup?.procsFiles ?? []))
      p.child.stdout.pipe(process.stdout)`
    const parent = spawn(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, SANDBOX_INIT: JSON.stringify(init) },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let out = ''
    await new Promise<void>((resolve, reject) => {
      parent.stdout.on('data', (d) => {
        out += d
        if (out.includes('"pid"')) resolve()
      })
      parent.once('exit', () => reject(new Error(`the intermediate exited early: ${out}`)))
    })
    const procsFiles: string[] = JSON.parse(out.split('\n')[0] ?? '[]')
    const tree = descendants(parent.pid ?? -1)
    assert.ok(tree.length >= 3, `bwrap, its init and the probe: ${tree}`)
    parent.kill('SIGKILL')
    const deadline = Date.now() + 2000
    while (tree.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    assert.deepEqual(tree.filter(alive), [])
    // The dead daemon could not clean up; a sandbox started meanwhile (another test file)
    // may already have swept these groups as stale, which is what that sweep is for.
    for (const f of procsFiles) {
      try {
        rmdirSync(dirname(f))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
    }
  })
})

/** The runner groups that exist now, in the first hierarchy the sandbox uses. */
function sandboxGroups(): string[] {
  const cg = sandbox.cgroups
  const dir = cg.version === 2 ? cg.group : cg.version === 1 ? cg.memory : undefined
  return dir === undefined ? [] : readdirSync(dir).filter((n) => n.startsWith('runner-'))
}

/** Every live descendant of pid, from /proc's parent links. */
function descendants(root: number): number[] {
  const children = new Map<number, number[]>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)])
    } catch {} // exited while we looked
  }
  const out: number[] = []
  const queue = [root]
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    for (const c of children.get(pid) ?? []) {
      out.push(c)
      queue.push(c)
    }
  }
  return out
}

/** Running, not a zombie waiting for a reaper. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}
