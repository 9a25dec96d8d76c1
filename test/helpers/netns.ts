// Network namespaces for tests that need hosts which really cannot reach each other: each
// namespace has its own interfaces, routes and loopback, joined by veth pairs the test
// creates. Names carry the test process's pid, so a run never touches another run's
// namespaces, and `removeStaleNamespaces` deletes those whose process is gone (a crashed
// run). Needs root (CAP_SYS_ADMIN) and iproute2.

import { execFile, spawn } from 'node:child_process'
import { promisify } from 'node:util'

const run = promisify(execFile)
const PREFIX = 'sbtnet-'

/** Set to 1 to skip namespace tests on a machine that cannot create them (never on CI here). */
export const SKIP_NETNS_ENV = 'SUBSTRATE_TEST_SKIP_NETNS'

export async function ip(...args: string[]): Promise<string> {
  try {
    const { stdout } = await run('ip', args, { timeout: 10_000 })
    return stdout
  } catch (err) {
    const e = err as { stderr?: string; message: string }
    throw new Error(`ip ${args.join(' ')} failed: ${(e.stderr ?? '').trim() || e.message}`)
  }
}

/** This run's name for a namespace: `sbtnet-<pid>-<role>`. */
export function nsName(role: string): string {
  return `${PREFIX}${process.pid}-${role}`
}

export async function listNamespaces(): Promise<string[]> {
  const out = await ip('netns', 'list')
  return out
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n !== '')
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Deletes namespaces left by earlier runs whose process no longer exists. */
export async function removeStaleNamespaces(): Promise<string[]> {
  const removed: string[] = []
  for (const name of await listNamespaces()) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name)
    if (m === null || Number(m[1]) === process.pid || alive(Number(m[1]))) continue
    await ip('netns', 'del', name).catch(() => undefined)
    removed.push(name)
  }
  return removed
}

export interface Link {
  /** namespace, interface name inside it, address with prefix length */
  a: { ns: string; dev: string; addr: string }
  b: { ns: string; dev: string; addr: string }
}

/**
 * Creates the namespaces and the veth links between them, every interface (and loopback)
 * up, IP forwarding off in each (so no namespace routes between two others).
 */
export async function createTopology(namespaces: string[], links: Link[]): Promise<void> {
  for (const ns of namespaces) {
    await ip('netns', 'add', ns)
    await ip('-n', ns, 'link', 'set', 'lo', 'up')
    await nsRun(ns, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0'])
  }
  for (const { a, b } of links) {
    await ip('link', 'add', a.dev, 'netns', a.ns, 'type', 'veth', 'peer', 'name', b.dev, 'netns', b.ns)
    for (const end of [a, b]) {
      await ip('-n', end.ns, 'addr', 'add', end.addr, 'dev', end.dev)
      await ip('-n', end.ns, 'link', 'set', end.dev, 'up')
    }
  }
}

/** Deletes the namespaces (and with them their veth ends); never throws. */
export async function deleteNamespaces(namespaces: string[]): Promise<void> {
  for (const ns of namespaces) await ip('netns', 'del', ns).catch(() => undefined)
}

/** Runs a command inside a namespace and returns its stdout; rejects with its stderr. */
export async function nsRun(ns: string, argv: string[], timeoutMs = 30_000): Promise<string> {
  try {
    const { stdout } = await run('ip', ['netns', 'exec', ns, ...argv], {
      timeout: timeoutMs,
      maxBuffer: 16 * 1024 * 1024,
    })
    return stdout
  } catch (err) {
    const e = err as { stderr?: string; message: string }
    throw new Error(`in ${ns}: ${argv.join(' ')} failed: ${(e.stderr ?? '').trim() || e.message}`)
  }
}

// A fetch run by a short-lived Node inside the namespace: the daemons' APIs listen on the
// loopback of their own namespace, which the test process cannot reach.
const fetchScript = `
const [url, method, body] = process.argv.slice(1)
const res = await fetch(url, { method, ...(body === '' ? {} : { body }) })
process.stdout.write(JSON.stringify({ status: res.status, body: await res.text() }))
`

/** fetch() from inside `ns`: status and body text. */
export async function nsFetch(
  ns: string,
  url: string,
  init: { method?: string; body?: string } = {},
): Promise<{ status: number; body: string }> {
  const out = await nsRun(ns, [
    process.execPath,
    '--input-type=module',
    '-e',
    fetchScript,
    url,
    init.method ?? 'GET',
    init.body ?? '',
  ])
  return JSON.parse(out) as { status: number; body: string }
}

/** True when a TCP connection from `ns` to host:port succeeds within 2 s. */
export async function nsCanConnect(ns: string, host: string, port: number): Promise<boolean> {
  const script = `const s = require('node:net').connect(${port}, ${JSON.stringify(host)});
s.setTimeout(2000, () => process.exit(2)); s.on('connect', () => process.exit(0)); s.on('error', () => process.exit(1))`
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: 'ignore' })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  return code === 0
}
