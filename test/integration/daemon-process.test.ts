// Real `substrate serve` processes on throwaway homes: what a second daemon, a SIGKILL in
// the middle of a stream and a SIGTERM do to the home, its lock, its runners and its clients.

import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { after, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import { tempHome } from '../helpers/node.ts'

const cliEntry = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const startTimeoutMs = 30_000
// A daemon process starts or stops in ~1 s on a quiet machine; the bound is for a loaded CI box.
const exitTimeoutMs = 30_000

interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

interface ServeProcess {
  child: ChildProcess
  pid: number
  exited: Promise<Exit>
  /** everything the process has written to stderr so far */
  stderr(): string
}

interface Daemon extends ServeProcess {
  url: string
}

const spawned: ServeProcess[] = []
const runnerPids = new Set<number>()
const homes: string[] = []

function newHome(): string {
  const home = tempHome('substrate-daemon-')
  homes.push(home)
  return home
}

/** `substrate serve` on `home` and any free port, logging JSON lines on stderr. */
function spawnServe(home: string): ServeProcess {
  // The daemon must see only this home: no SUBSTRATE_* setting of whoever runs the tests.
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('SUBSTRATE_')) env[key] = value
  env.SUBSTRATE_LOG_FORMAT = 'json'
  env.SUBSTRATE_ENGINE = 'node-llama-cpp'
  env.SUBSTRATE_ENGINE_BUILD = 'false'
  const child = spawn(
    process.execPath,
    [cliEntry, 'serve', '--home', home, '--host', '127.0.0.1', '--port', '0', '--threads', '1'],
    { env, stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let stderr = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (chunk: string) => {
    stderr += chunk
  })
  const exited = new Promise<Exit>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  )
  assert.ok(child.pid !== undefined, 'serve did not start')
  const proc: ServeProcess = { child, pid: child.pid, exited, stderr: () => stderr }
  spawned.push(proc)
  return proc
}

/** Resolves with `promise`, or fails the test naming `what` once `ms` have passed. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Starts a daemon and waits for its "ready" log line, which carries the URL it listens on. */
async function startDaemon(home: string): Promise<Daemon> {
  const proc = spawnServe(home)
  const deadline = Date.now() + startTimeoutMs
  let exit: Exit | undefined
  void proc.exited.then((e) => {
    exit = e
  })
  while (Date.now() < deadline && exit === undefined) {
    for (const line of proc.stderr().split('\n')) {
      if (!line.startsWith('{')) continue
      const entry = JSON.parse(line) as { msg?: unknown; url?: unknown }
      if (typeof entry.msg === 'string' && entry.msg.endsWith(' ready') && typeof entry.url === 'string') {
        return { ...proc, url: entry.url }
      }
    }
    await sleep(25)
  }
  throw new Error(
    `serve ${exit ? `exited (${JSON.stringify(exit)})` : `was not ready within ${startTimeoutMs} ms`}:\n${proc.stderr()}`,
  )
}

/**
 * Whether a pid names a process that still runs. A runner orphaned by a SIGKILLed daemon
 * is reparented to pid 1, which in some containers never reaps it: a zombie has exited.
 */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
    return state !== 'Z' && state !== 'X'
  } catch {
    return false // gone between the two looks
  }
}

async function waitUntilGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (!isRunning(pid)) return true
    await sleep(50)
  }
  return !isRunning(pid)
}

async function runnerPidsOf(url: string): Promise<number[]> {
  const res = await fetch(`${url}/substrate/v1/runners`, { signal: AbortSignal.timeout(5000) })
  assert.equal(res.status, 200)
  const body = (await res.json()) as { runners: Array<{ pid: number }> }
  const pids = body.runners.map((r) => r.pid)
  for (const pid of pids) runnerPids.add(pid)
  return pids
}

async function generateText(url: string, prompt: string): Promise<string> {
  const res = await fetch(`${url}/api/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'substrate-tiny', prompt, stream: false }),
    signal: AbortSignal.timeout(30_000),
  })
  const body = (await res.json()) as { response?: unknown }
  assert.equal(res.status, 200, JSON.stringify(body))
  return String(body.response).trim()
}

function lockPid(home: string): number | undefined {
  const path = join(home, 'daemon.lock')
  if (!existsSync(path)) return undefined
  return (JSON.parse(readFileSync(path, 'utf8')) as { pid: number }).pid
}

after(async () => {
  for (const proc of spawned) {
    if (proc.child.exitCode === null && proc.child.signalCode === null) {
      proc.child.kill('SIGKILL')
      await within(5000, `serve ${proc.pid} exiting on cleanup`, proc.exited).catch(() => {})
    }
  }
  // Runners exit when their daemon does; this only matters when a test failed halfway.
  for (const pid of runnerPids) {
    if (isRunning(pid) && !(await waitUntilGone(pid, 5000))) process.kill(pid, 'SIGKILL')
  }
  for (const home of homes) rmSync(home, { recursive: true, force: true })
})

describe('the daemon as a process', () => {
  test('a second serve on the same home exits with code 8 naming the running daemon, which keeps serving', async (t) => {
    const home = newHome()
    const first = await startDaemon(home)

    const started = Date.now()
    const second = spawnServe(home)
    const exit = await within(exitTimeoutMs, 'the second serve exiting', second.exited)
    const elapsedMs = Date.now() - started

    assert.deepEqual(exit, { code: 8, signal: null }, second.stderr())
    assert.match(second.stderr(), new RegExp(`another substrate daemon \\(pid ${first.pid}\\) is using`))
    t.diagnostic(`the second serve was refused after ${elapsedMs} ms`)
    // The refused daemon must not have touched the lock on its way out.
    assert.equal(lockPid(home), first.pid)
    const status = await fetch(`${first.url}/substrate/v1/status`, { signal: AbortSignal.timeout(5000) })
    assert.equal(status.status, 200)
    assert.equal(((await status.json()) as { pid: number }).pid, first.pid)
    assert.equal(await generateText(first.url, 'still there?'), TINY_ANSWER)

    first.child.kill('SIGTERM')
    assert.deepEqual(await within(exitTimeoutMs, 'the first daemon stopping', first.exited), {
      code: 0,
      signal: null,
    })
  })

  test('a SIGKILLed daemon fails its open stream, its runner exits, and the home starts again', async (t) => {
    const home = newHome()
    const daemon = await startDaemon(home)

    // A raw prompt ending in "~" makes substrate-tiny say "tick tock" until num_predict.
    const client = new AbortController()
    const res = await fetch(`${daemon.url}/api/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'substrate-tiny',
        prompt: 'clock~',
        raw: true,
        options: { num_predict: 1_000_000, temperature: 0 },
      }),
      signal: client.signal,
    })
    assert.equal(res.status, 200)
    assert.ok(res.body)
    const reader = res.body.getReader()
    const decoder = new TextDecoder()
    let received = ''
    try {
      while ((received.match(/"done":false/g) ?? []).length < 5) {
        const chunk = await within(20_000, 'the first tokens', reader.read())
        assert.equal(chunk.done, false, `the stream ended early: ${received}`)
        received += decoder.decode(chunk.value, { stream: true })
      }
      assert.match(received, /tick|tock/)
      const [runnerPid] = await runnerPidsOf(daemon.url)
      assert.ok(runnerPid !== undefined && isRunning(runnerPid), 'a runner serves the stream')

      daemon.child.kill('SIGKILL')
      assert.deepEqual(await within(5000, 'the daemon dying', daemon.exited), {
        code: null,
        signal: 'SIGKILL',
      })
      const diedAt = Date.now()

      // The client must see an error, not a hang and not a clean end of an unfinished answer.
      const outcome = await within(
        5000,
        'the client noticing',
        (async () => {
          for (;;) {
            const chunk = await reader.read()
            if (chunk.done) return 'ended cleanly'
            received += decoder.decode(chunk.value, { stream: true })
          }
        })().catch((err: unknown) => err),
      )
      assert.ok(outcome instanceof Error, `the stream should fail, but it ${String(outcome)}`)
      assert.doesNotMatch(received, /"done":true/)

      assert.ok(await waitUntilGone(runnerPid, 5000), `runner ${runnerPid} outlived its daemon by 5 s`)
      t.diagnostic(`client error: ${outcome.message}; runner gone ${Date.now() - diedAt} ms after the daemon`)
    } finally {
      client.abort()
    }

    // The dead daemon's lock is still there; the next daemon must take it over.
    assert.equal(lockPid(home), daemon.pid)
    const again = await startDaemon(home)
    assert.equal(lockPid(home), again.pid)

    const tags = await fetch(`${again.url}/api/tags`, { signal: AbortSignal.timeout(5000) })
    const names = ((await tags.json()) as { models: Array<{ name: string }> }).models.map((m) => m.name)
    assert.ok(names.includes('substrate-tiny:latest'), `tags: ${names.join(', ')}`)
    assert.equal(await generateText(again.url, 'after the crash'), TINY_ANSWER)

    const db = new DatabaseSync(join(home, 'substrate.db'), { readOnly: true })
    try {
      assert.equal(db.prepare('PRAGMA integrity_check').get()?.integrity_check, 'ok')
    } finally {
      db.close()
    }
    assert.deepEqual(readdirSync(join(home, 'models', 'tmp')), [])

    again.child.kill('SIGTERM')
    assert.deepEqual(await within(exitTimeoutMs, 'the restarted daemon stopping', again.exited), {
      code: 0,
      signal: null,
    })
  })

  test('SIGTERM stops the daemon with exit code 0, stops its runner and releases the home', async () => {
    const home = newHome()
    const daemon = await startDaemon(home)
    assert.equal(await generateText(daemon.url, 'hello'), TINY_ANSWER)
    const [runnerPid] = await runnerPidsOf(daemon.url)
    assert.ok(runnerPid !== undefined && isRunning(runnerPid), 'a runner was loaded')

    daemon.child.kill('SIGTERM')
    assert.deepEqual(await within(exitTimeoutMs, 'the daemon stopping', daemon.exited), {
      code: 0,
      signal: null,
    })
    assert.ok(await waitUntilGone(runnerPid, 5000), `runner ${runnerPid} outlived its daemon by 5 s`)
    assert.equal(existsSync(join(home, 'daemon.lock')), false)
  })
})
