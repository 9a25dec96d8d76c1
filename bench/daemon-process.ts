// Starts `substrate serve` as its own process on a throwaway home and a free loopback port,
// exactly as a user would run it, so a benchmark's client never shares an event loop with
// the daemon it measures. The benchmark talks to it over HTTP only.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, sleep } from './machine.ts'

export const repoRoot = fileURLToPath(new URL('..', import.meta.url))

/** The commit the daemon under test was started from, and whether src/ had local changes. */
export function sourceRevision(): { commit: string; srcDirty: boolean | null } {
  const git = (...args: string[]) => spawnSync('git', args, { cwd: repoRoot, encoding: 'utf8' })
  const head = git('rev-parse', '--short', 'HEAD')
  if (head.status !== 0) return { commit: 'unknown (not a git checkout)', srcDirty: null }
  return { commit: head.stdout.trim(), srcDirty: git('status', '--porcelain', 'src').stdout.trim() !== '' }
}

export interface DaemonOptions {
  /** runtime.threads: 0 lets each runner measure and choose */
  threads?: number
  parallel?: number
  contextSize?: number
  /** sandbox.backend (bwrap, gvisor, none); the daemon's default when absent */
  sandbox?: string
  /** runtime.engine (auto, llama-server, node-llama-cpp); the daemon's default (auto) when absent */
  engine?: string
  /** the CLI entry to run; defaults to the sources */
  entry?: string
  /** more SUBSTRATE_* settings, e.g. { SUBSTRATE_MESH: 'false' } */
  env?: Record<string, string>
  /** how long the daemon may take to answer (default 30 s; a loaded host starting many needs more) */
  startTimeoutMs?: number
}

export interface DaemonProcess {
  url: string
  pid: number
  home: string
  /** the daemon's stderr so far (its log), for reporting a failure */
  log(): string
  stop(): Promise<void>
}

export async function startDaemon(options: DaemonOptions = {}): Promise<DaemonProcess> {
  const home = mkdtempSync(join(tmpdir(), 'substrate-bench-'))
  const port = await freePort()
  const args = [
    options.entry ?? join(repoRoot, 'src/cli/main.ts'),
    'serve',
    '--home',
    home,
    '--port',
    String(port),
  ]
  if (options.threads !== undefined) args.push('--threads', String(options.threads))
  if (options.parallel !== undefined) args.push('--parallel', String(options.parallel))
  if (options.sandbox !== undefined) args.push('--sandbox', options.sandbox)
  // Only our settings: a SUBSTRATE_* variable left in the caller's shell must not change the run.
  const env: NodeJS.ProcessEnv = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('SUBSTRATE_')),
  )
  // info, as JSON lines: the runner's "model loaded" line carries its thread calibration
  env.SUBSTRATE_LOG_LEVEL = 'info'
  env.SUBSTRATE_LOG_FORMAT = 'json'
  env.SUBSTRATE_KEEP_ALIVE = '-1'
  // a benchmark measures, it never starts a 15-minute compile beside what it measures
  env.SUBSTRATE_ENGINE_BUILD = 'false'
  if (options.engine !== undefined) env.SUBSTRATE_ENGINE = options.engine
  if (options.contextSize !== undefined) env.SUBSTRATE_CONTEXT_SIZE = String(options.contextSize)
  Object.assign(env, options.env)
  const child: ChildProcess = spawn(process.execPath, args, {
    cwd: repoRoot,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let log = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    log = (log + chunk.toString('utf8')).slice(-20_000)
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const url = `http://127.0.0.1:${port}`
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await Promise.race([exited, sleep(10_000)])
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    rmSync(home, { recursive: true, force: true })
  }
  const startTimeoutMs = options.startTimeoutMs ?? 30_000
  const deadline = Date.now() + startTimeoutMs
  for (;;) {
    if (child.exitCode !== null) {
      await stop()
      throw new Error(`substrate serve exited (${child.exitCode}):\n${log}`)
    }
    try {
      const res = await fetch(`${url}/substrate/v1/status`, { signal: AbortSignal.timeout(1000) })
      if (res.ok) break
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop()
      throw new Error(`substrate serve did not answer within ${startTimeoutMs / 1000} s:\n${log}`)
    }
    await sleep(50)
  }
  return { url, pid: child.pid ?? 0, home, log: () => log, stop }
}

/** The runner a daemon has loaded for a model: its pid, chosen threads and build type. */
export async function loadedRunner(
  url: string,
): Promise<{ pid: number; threads: number; buildType: string }> {
  const res = await fetch(`${url}/substrate/v1/runners`)
  const body = (await res.json()) as { runners: Array<{ pid: number; threads: number; buildType: string }> }
  const runner = body.runners[0]
  if (!runner) throw new Error('no runner loaded')
  return runner
}

/**
 * What the runner measured when it chose its threads in auto mode (tokens/s per candidate
 * thread count), from the daemon's "model loaded" log line; empty when threads were pinned.
 */
export function threadCalibration(log: string): Record<string, number> {
  for (const line of log.split('\n').reverse()) {
    if (!line.startsWith('{')) continue
    const entry = JSON.parse(line) as { msg?: string; measured?: Record<string, number> }
    if (entry.msg === 'model loaded') return entry.measured ?? {}
  }
  return {}
}

/** The runner sandbox really in force ({ requested, active, enforced, … }), from the doctor. */
export async function sandboxInForce(url: string): Promise<unknown> {
  const res = await fetch(`${url}/substrate/v1/doctor`)
  if (!res.ok) return `unknown (doctor answered ${res.status})`
  return ((await res.json()) as { backend?: unknown }).backend ?? 'unknown'
}

/** The file a model name resolves to on this daemon (from /api/show's modelfile). */
export async function modelPath(url: string, model: string): Promise<string> {
  const res = await fetch(`${url}/api/show`, { method: 'POST', body: JSON.stringify({ model }) })
  if (!res.ok) throw new Error(`/api/show ${model}: ${res.status} ${await res.text()}`)
  const body = (await res.json()) as { modelfile: string }
  const match = /^FROM (.+)$/m.exec(body.modelfile)
  if (!match?.[1]) throw new Error(`no FROM line in ${body.modelfile}`)
  return match[1]
}
