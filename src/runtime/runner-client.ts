// The daemon's side of one runner process: starts it, waits for the model to load, routes
// generation events to the request that asked, and turns a crash into a typed error for
// every request in flight.

import type { ChildProcessWithoutNullStreams } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { isErrorCode, SubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import { type Channel, createChannel } from './channel.ts'
import {
  type ChatMessage,
  createLineSplitter,
  type FromRunner,
  fromRunnerSchema,
  type GenerationStats,
  type SamplingOptions,
  type ScoredSplit,
  type ToRunner,
} from './protocol.ts'
import type { RunnerLauncher } from './spawn.ts'

export type RunnerEvent =
  | { type: 'token'; text: string; tokens: number }
  | { type: 'done'; stats: GenerationStats }
type ScoredEvent = { type: 'scored'; promptTokens: number; splits: ScoredSplit[] }

/** A teacher-forced check of `output` after the request's prompt (protocol.ts, `score`). */
export interface RunnerScoreRequest {
  mode: 'completion' | 'chat'
  prompt?: string
  messages?: ChatMessage[]
  output: string
  /** the receipt CID the positions are drawn from */
  seed: string
  count: number
  topK: number
}

export interface RunnerScore {
  promptTokens: number
  splits: ScoredSplit[]
}

export interface RunnerRequest {
  mode: 'completion' | 'chat'
  prompt?: string
  messages?: ChatMessage[]
  options: SamplingOptions
}

export interface RunnerHandle {
  readonly pid: number
  readonly contextSize: number
  readonly loadMs: number
  readonly buildType: string
  /** threads the runner decodes with (chosen by measurement when configured as 0) */
  readonly threads: number
  /** requests currently generating or waiting for a sequence */
  readonly active: number
  generate(req: RunnerRequest, signal?: AbortSignal): AsyncIterable<RunnerEvent>
  score(req: RunnerScoreRequest): Promise<RunnerScore>
  /** resolves when the process has exited, for whatever reason */
  readonly exited: Promise<void>
  stop(): Promise<void>
}

export interface StartRunnerInit {
  launcher: RunnerLauncher
  logger: Logger
  /** the model file on the host; the runner is told the launcher's path for it */
  modelPath: string
  contextSize: number
  parallel: number
  threads: number
  /** llama-server on the host (engine.ts): the runner drives it instead of node-llama-cpp */
  llamaServer?: string
  /** longest a token waits in the runner to share a message with the next ones */
  tokenWindowMs?: number
  loadTimeoutMs?: number
}

function typedError(code: string, message: string): SubstrateError {
  return new SubstrateError(isErrorCode(code) ? code : 'E_INTERNAL', message)
}

export async function startRunner(init: StartRunnerInit): Promise<RunnerHandle> {
  const engineInside =
    init.llamaServer === undefined
      ? undefined
      : init.launcher.enginePathInside === undefined
        ? init.llamaServer
        : init.launcher.enginePathInside(init.llamaServer)
  const child: ChildProcessWithoutNullStreams = init.launcher.spawn({
    modelPath: init.modelPath,
    threads: init.threads,
    contextSize: init.contextSize,
    parallel: init.parallel,
    ...(engineInside !== undefined && { enginePath: init.llamaServer }),
  })
  const log = init.logger.child(`runner:${child.pid ?? '?'}`)
  const requests = new Map<string, Channel<RunnerEvent | ScoredEvent>>()
  let stderrTail = ''
  let exitedFlag = false
  let onReady: ((msg: Extract<FromRunner, { type: 'ready' }>) => void) | undefined
  let onLoadError: ((err: SubstrateError) => void) | undefined

  const write = (msg: ToRunner) => {
    if (!exitedFlag && child.stdin.writable) child.stdin.write(`${JSON.stringify(msg)}\n`)
  }
  const handle = (msg: FromRunner) => {
    if (msg.type === 'ready') onReady?.(msg)
    else if (msg.type === 'error' && msg.id === undefined) onLoadError?.(typedError(msg.code, msg.message))
    else if (msg.type === 'error') {
      requests.get(msg.id!)?.fail(typedError(msg.code, msg.message))
      requests.delete(msg.id!)
    } else if (msg.type === 'token') requests.get(msg.id)?.push(msg)
    else if (msg.type === 'done' || msg.type === 'scored') {
      const ch = requests.get(msg.id)
      requests.delete(msg.id)
      ch?.push(msg)
      ch?.close()
    }
  }
  child.stdout.on(
    'data',
    createLineSplitter(
      (line) => {
        let msg: FromRunner
        try {
          msg = fromRunnerSchema.parse(JSON.parse(line))
        } catch {
          log.warn('dropping a malformed line from the runner', { line: line.slice(0, 200) })
          return
        }
        handle(msg)
      },
      () => {
        log.error('runner wrote an oversize line; killing it')
        child.kill('SIGKILL')
      },
    ),
  )
  child.stderr.on('data', (chunk: Buffer) => {
    stderrTail = (stderrTail + chunk.toString('utf8')).slice(-4000)
  })
  child.stdin.on('error', () => {}) // EPIPE after a crash is reported through 'exit'

  const exited = new Promise<void>((resolve) => {
    child.on('exit', async (code, signal) => {
      exitedFlag = true
      // the launcher may know better than the status (a sandbox's OOM killer shows as exit 137)
      const known = await init.launcher.exitReason(child).catch(() => undefined)
      const why = known ?? (signal ? `signal ${signal}` : `exit code ${code}`)
      const detail = stderrTail.trim().split('\n').slice(-3).join(' | ')
      const err = new SubstrateError(
        'E_RUNNER_CRASHED',
        `the model runner stopped (${why})${detail ? `: ${detail}` : ''}`,
        { hint: 'the next request starts a new runner' },
      )
      for (const ch of requests.values()) ch.fail(err)
      requests.clear()
      onLoadError?.(
        new SubstrateError(
          'E_RUNNER_START',
          `the model runner failed to load the model (${why})${detail ? `: ${detail}` : ''}`,
        ),
      )
      resolve()
    })
  })
  child.on('error', (err) =>
    onLoadError?.(new SubstrateError('E_RUNNER_START', `cannot start the runner: ${err.message}`)),
  )

  write({
    type: 'load',
    modelPath: init.launcher.modelPathInside(init.modelPath),
    contextSize: init.contextSize,
    parallel: init.parallel,
    threads: init.threads,
    ...(init.tokenWindowMs !== undefined && { tokenWindowMs: init.tokenWindowMs }),
    ...(engineInside !== undefined && { llamaServer: engineInside }),
  })
  const ready = await new Promise<Extract<FromRunner, { type: 'ready' }>>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(
        new SubstrateError(
          'E_RUNNER_START',
          `the model did not load within ${init.loadTimeoutMs ?? 120_000} ms`,
        ),
      )
    }, init.loadTimeoutMs ?? 120_000)
    onReady = (msg) => {
      clearTimeout(timer)
      resolve(msg)
    }
    onLoadError = (err) => {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(err)
    }
  })
  onLoadError = undefined
  log.info('model loaded', {
    ms: Math.round(ready.loadMs),
    build: ready.buildType,
    threads: ready.threads,
    ...(Object.keys(ready.measuredTokensPerSecond).length > 0 && {
      measured: Object.fromEntries(
        Object.entries(ready.measuredTokensPerSecond).map(([k, v]) => [k, Math.round(v)]),
      ),
    }),
  })

  return {
    pid: child.pid ?? -1,
    contextSize: ready.contextSize,
    loadMs: ready.loadMs,
    buildType: ready.buildType,
    threads: ready.threads,
    get active() {
      return requests.size
    },
    exited,
    generate(req, signal) {
      if (exitedFlag) throw new SubstrateError('E_RUNNER_CRASHED', 'the model runner has stopped')
      const id = randomUUID()
      const ch = createChannel<RunnerEvent | ScoredEvent>()
      requests.set(id, ch)
      const cancel = () => write({ type: 'cancel', id })
      signal?.addEventListener('abort', cancel, { once: true })
      write({ type: 'generate', id, ...req })
      return (async function* () {
        try {
          for await (const ev of ch) if (ev.type !== 'scored') yield ev
        } finally {
          signal?.removeEventListener('abort', cancel)
          // A consumer that stops early (client gone) cancels the generation.
          if (requests.delete(id)) cancel()
        }
      })()
    },
    async score(req) {
      if (exitedFlag) throw new SubstrateError('E_RUNNER_CRASHED', 'the model runner has stopped')
      const id = randomUUID()
      const ch = createChannel<RunnerEvent | ScoredEvent>()
      requests.set(id, ch)
      write({ type: 'score', id, ...req })
      try {
        for await (const ev of ch)
          if (ev.type === 'scored') return { promptTokens: ev.promptTokens, splits: ev.splits }
      } finally {
        requests.delete(id)
      }
      throw new SubstrateError('E_INTERNAL', 'the runner ended a check without a result')
    },
    async stop() {
      if (exitedFlag) return
      write({ type: 'shutdown' })
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000)
      await exited
      clearTimeout(timer)
    },
  }
}
