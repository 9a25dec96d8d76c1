// Real `substrate serve` processes for integration tests: each on a throwaway home, a free
// loopback port and a loopback mesh listener, found by its "ready" log line. `stopAll()`
// kills whatever a test left running and removes the homes.

import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { nsFetch, nsRun } from './netns.ts'
import { tempHome } from './node.ts'

const cliEntry = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))

export interface DaemonProcess {
  child: ChildProcess
  pid: number
  home: string
  url: string
  /** mesh addresses, each with /p2p/<id> */
  meshAddrs: string[]
  /** the node's peer id */
  id: string
  /** the network namespace it runs in (its API is only reachable from there), if any */
  netns?: string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  stderr(): string
}

const running: DaemonProcess[] = []

/** Starts `substrate serve` with `args` (beyond home, host, port, threads) and waits until it answers. */
export async function startDaemonProcess(
  args: string[] = [],
  // Generous: a daemon start on this shared 2-core machine took over 30 s at load 60.
  startTimeoutMs = 60_000,
  options: { netns?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<DaemonProcess> {
  const home = tempHome('substrate-mesh-')
  // The daemon must see only what the test gives it: no SUBSTRATE_* of whoever runs the tests.
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('SUBSTRATE_')) env[key] = value
  env.SUBSTRATE_LOG_FORMAT = 'json'
  // the engine is named, not left to what this machine happens to have built (engine.ts)
  env.SUBSTRATE_ENGINE = 'node-llama-cpp'
  env.SUBSTRATE_ENGINE_BUILD = 'false'
  Object.assign(env, options.env)
  const argv = [
    process.execPath,
    cliEntry,
    'serve',
    '--home',
    home,
    '--host',
    '127.0.0.1',
    '--port',
    '0',
    '--threads',
    '1',
    ...args,
  ]
  // `ip netns exec` enters the namespace and then execs node: the child's pid is the daemon's.
  const [command, ...rest] =
    options.netns === undefined ? argv : ['ip', 'netns', 'exec', options.netns, ...argv]
  const child = spawn(command!, rest, { env, stdio: ['ignore', 'ignore', 'pipe'] })
  assert.ok(child.pid !== undefined, 'serve did not start')
  let stderr = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => {
    stderr += chunk
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  )
  const deadline = Date.now() + startTimeoutMs
  while (Date.now() < deadline && child.exitCode === null && child.signalCode === null) {
    const ready = stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg?: unknown; url?: unknown })
      .find((e) => typeof e.msg === 'string' && e.msg.endsWith(' ready') && typeof e.url === 'string')
    if (ready !== undefined) {
      const url = String(ready.url)
      const status = JSON.parse(
        options.netns === undefined
          ? await (await fetch(`${url}/substrate/v1/status`)).text()
          : (await nsFetch(options.netns, `${url}/substrate/v1/status`)).body,
      ) as { id: string; mesh: { addrs: string[] } | null }
      const daemon: DaemonProcess = {
        child,
        pid: child.pid,
        home,
        url,
        id: status.id,
        meshAddrs: status.mesh?.addrs ?? [],
        ...(options.netns === undefined ? {} : { netns: options.netns }),
        exited,
        stderr: () => stderr,
      }
      running.push(daemon)
      return daemon
    }
    await sleep(25)
  }
  child.kill('SIGKILL')
  rmSync(home, { recursive: true, force: true })
  throw new Error(`serve did not become ready within ${startTimeoutMs} ms:\n${stderr}`)
}

/**
 * Runs the CLI as its own process against `daemon` (inside its namespace when it has one) and
 * resolves with its stdout; a non-zero exit fails with its stderr.
 */
export async function runCliProcess(daemon: DaemonProcess, argv: string[]): Promise<string> {
  const full = [
    process.execPath,
    cliEntry,
    ...argv,
    '--home',
    daemon.home,
    '--port',
    new URL(daemon.url).port,
  ]
  if (daemon.netns !== undefined) return nsRun(daemon.netns, full)
  const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString()
  })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  assert.equal(code, 0, err)
  return out
}

/** Polls `check` every 50 ms until it returns a value other than undefined, or fails naming `what`. */
export async function eventually<T>(
  what: string,
  ms: number,
  check: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await sleep(50)
  }
}

export async function stopAllDaemons(): Promise<void> {
  for (const d of running.splice(0)) {
    if (d.child.exitCode === null && d.child.signalCode === null) {
      d.child.kill('SIGTERM')
      const stopped = await Promise.race([d.exited.then(() => true), sleep(10_000, false, { ref: false })])
      if (!stopped) d.child.kill('SIGKILL')
    }
    rmSync(d.home, { recursive: true, force: true })
  }
}
