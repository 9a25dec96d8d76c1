// Where the daemon is, and starting one when it is not there. `substrate run` should just
// work on a fresh machine (as `ollama run` does), so commands that need a daemon call
// ensureDaemon: if nothing answers, `substrate serve` is started detached, writing to
// $home/logs/daemon.log, and we wait for it to answer.

import { spawn } from 'node:child_process'
import { closeSync, mkdirSync, openSync, readFileSync, statSync } from 'node:fs'
import { extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type Client, createClient } from '../api/client.ts'
import { type Config, isLoopbackHost } from '../config/schema.ts'
import { SubstrateError } from '../errors.ts'
import type { CommandContext } from './render.ts'

const startTimeoutMs = 15_000
const pollEveryMs = 150

/** The URL a client should use. A daemon bound to every interface is reached on loopback. */
export function daemonUrl(config: Config): string {
  const bound = config.api.host
  const host = bound === '0.0.0.0' ? '127.0.0.1' : bound === '::' ? '::1' : bound
  return `http://${host.includes(':') ? `[${host}]` : host}:${config.api.port}`
}

export function clientFor(config: Config): Client {
  return createClient({ baseUrl: daemonUrl(config), token: config.api.token })
}

/** The CLI entry file next to this one: main.ts when run from source, main.js when built. */
function cliEntry(): string {
  const self = fileURLToPath(import.meta.url)
  return fileURLToPath(new URL(`./main${extname(self)}`, import.meta.url))
}

async function answers(client: Client): Promise<boolean> {
  try {
    await client.status({ signal: AbortSignal.timeout(1000) })
    return true
  } catch (err) {
    if (err instanceof SubstrateError && err.code === 'E_DAEMON_UNREACHABLE') return false
    throw err // e.g. E_UNAUTHORIZED: a daemon is there, and the user must fix the token
  }
}

/** What the new daemon wrote since we started it: usually the reason it failed. */
function logTail(path: string, from: number): string {
  try {
    const text = readFileSync(path).subarray(from).toString('utf8').trim()
    return text.split('\n').slice(-6).join('\n')
  } catch {
    return ''
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Returns a client for a daemon that answers, starting one in the background if needed. */
export async function ensureDaemon(
  config: Config,
  ctx: Pick<CommandContext, 'io' | 'connection'>,
): Promise<Client> {
  const client = clientFor(config)
  if (await answers(client)) return client
  const host = config.api.host
  if (!isLoopbackHost(host) && host !== '0.0.0.0' && host !== '::') {
    throw new SubstrateError('E_DAEMON_UNREACHABLE', `no substrate daemon answers at ${client.baseUrl}`, {
      hint: 'it is not on this machine, so it cannot be started from here; check --host/SUBSTRATE_HOST',
    })
  }

  const logDir = join(config.home, 'logs')
  mkdirSync(logDir, { recursive: true, mode: 0o700 })
  const logPath = join(logDir, 'daemon.log')
  const fd = openSync(logPath, 'a', 0o600)
  const logStart = statSync(logPath).size
  // Only the flags the user gave: the daemon resolves env and config.toml exactly as we did.
  const flags: string[] = []
  for (const key of ['home', 'host', 'port'] as const) {
    const value = ctx.connection[key]
    if (value !== undefined) flags.push(`--${key}`, value)
  }
  // The token goes through the environment: on the command line `ps` would show it.
  const env = { ...process.env }
  if (ctx.connection.token !== undefined) env.SUBSTRATE_TOKEN = ctx.connection.token
  ctx.io.stderr.write(`starting the substrate daemon in the background (log: ${logPath})\n`)
  const child = spawn(process.execPath, [cliEntry(), 'serve', ...flags], {
    detached: true,
    stdio: ['ignore', fd, fd],
    env,
  })
  closeSync(fd)
  let exitedAt: number | undefined
  let exitCode: number | null = null
  child.once('exit', (code) => {
    exitedAt = Date.now()
    exitCode = code
  })
  child.once('error', () => {
    exitedAt = Date.now()
  })
  child.unref()

  const deadline = Date.now() + startTimeoutMs
  while (Date.now() < deadline) {
    await sleep(pollEveryMs)
    if (await answers(client)) return client
    // Ours exited (maybe another CLI won the race for the home lock): give theirs a moment.
    if (exitedAt !== undefined && Date.now() - exitedAt > 3000) break
  }
  const tail = logTail(logPath, logStart)
  const why =
    exitedAt === undefined
      ? `did not answer within ${startTimeoutMs / 1000} s`
      : `exited${exitCode === null ? '' : ` with code ${exitCode}`} while starting`
  throw new SubstrateError('E_DAEMON_UNREACHABLE', `the substrate daemon ${why}`, {
    hint: `see ${logPath}${tail ? `; it ends with:\n${tail}` : ''}`,
  })
}
