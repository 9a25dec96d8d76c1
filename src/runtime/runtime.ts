// Which runner serves a request (after Ollama's server/sched.go): one runner per loaded
// model and context size, loaded on demand, kept alive for `keep_alive` after its last
// request, evicted least-recently-used when too many are loaded. Nothing else in the
// daemon spawns runners.

import type { Logger } from '../logger.ts'
import type { ModelRecord } from '../models/types.ts'
import type { Engine } from './engine.ts'
import type { ChatMessage, GenerationStats, SamplingOptions } from './protocol.ts'
import { type RunnerHandle, type RunnerScore, type RunnerScoreRequest, startRunner } from './runner-client.ts'
import {
  type RunnerLauncher,
  type SpawnRunner,
  spawnUnsandboxedRunner,
  unsandboxedLauncher,
} from './spawn.ts'

export interface RuntimeInit {
  /** 0 = each runner measures and picks */
  threads: number
  parallel: number
  contextSize: number
  keepAliveMs: number
  maxLoadedModels: number
  /** longest a streamed token waits to share a message with the next ones (runtime.streamWindow) */
  streamWindowMs?: number
  /** how runners start (the sandbox); unsandboxed when absent */
  launcher?: RunnerLauncher
  /** shorthand for an unsandboxed launcher with this spawn function (tests) */
  spawn?: SpawnRunner
  /** the engine each new runner uses (engine.ts), asked at every load; node-llama-cpp when absent */
  engine?: () => Engine
  /** throws (E_INSUFFICIENT_MEMORY) when a model cannot fit; called before every load */
  checkCanLoad?: (model: ModelRecord, contextSize: number, parallel: number) => void
}

export interface GenerateRequest {
  model: ModelRecord
  mode: 'completion' | 'chat'
  prompt?: string
  messages?: ChatMessage[]
  options: SamplingOptions
  /** per-sequence context size; defaults to the runtime's */
  contextSize?: number
  /** overrides the default keep-alive for this model, in ms; Infinity keeps it forever */
  keepAliveMs?: number
  signal?: AbortSignal
}

export interface ScoreRequest extends RunnerScoreRequest {
  model: ModelRecord
}

export type { RunnerScore as ScoreResult } from './runner-client.ts'

export type RuntimeEvent =
  /** `tokens`: how many output tokens `text` holds */
  | { type: 'token'; text: string; tokens: number }
  | { type: 'done'; stats: GenerationStats; loadMs: number; totalMs: number }

export interface LoadedModel {
  name: string
  digest: string
  size: number
  contextSize: number
  pid: number
  active: number
  buildType: string
  threads: number
  /** ms since epoch; Infinity when kept forever; the time it will unload when idle */
  expiresAt: number
}

interface Slot {
  key: string
  model: ModelRecord
  runner: Promise<RunnerHandle>
  loaded?: RunnerHandle
  keepAliveMs: number
  expiresAt: number
  timer?: NodeJS.Timeout
  lastUsed: number
}

export interface Runtime {
  generate(req: GenerateRequest): AsyncGenerator<RuntimeEvent>
  /**
   * A teacher-forced check of a claimed output in the model's runner (a spot check, DESIGN.md
   * step 8): one prefill, no generation; it shares the runner's sequences with generation.
   */
  score(req: ScoreRequest): Promise<RunnerScore>
  /** loads a model without generating (Ollama's empty-prompt request) */
  load(model: ModelRecord, keepAliveMs?: number): Promise<number>
  ps(): LoadedModel[]
  unload(digest: string): Promise<boolean>
  stop(): Promise<void>
}

/**
 * The per-sequence context a runner will really use: it clamps to the model's trained context
 * (runner-main.ts), so memory checks and slot keys must clamp the same way — otherwise an
 * oversized num_ctx is refused for memory the runner would never allocate. A model whose file
 * states no context length (0) is left to the runner.
 */
export function effectiveContextSize(requested: number, model: ModelRecord): number {
  const trained = model.details.contextLength
  return trained > 0 ? Math.min(requested, trained) : requested
}

export function createRuntime(components: { logger: Logger }, init: RuntimeInit): Runtime {
  const log = components.logger.child('runtime')
  const launcher = init.launcher ?? { ...unsandboxedLauncher, spawn: init.spawn ?? spawnUnsandboxedRunner }
  const slots = new Map<string, Slot>()

  const dropSlot = async (slot: Slot) => {
    if (slots.get(slot.key) === slot) slots.delete(slot.key)
    clearTimeout(slot.timer)
    const runner = await slot.runner.catch(() => undefined)
    await runner?.stop()
  }

  const armKeepAlive = (slot: Slot) => {
    clearTimeout(slot.timer)
    if ((slot.loaded?.active ?? 0) > 0) return
    if (!Number.isFinite(slot.keepAliveMs)) {
      slot.expiresAt = Number.POSITIVE_INFINITY
      return
    }
    slot.expiresAt = Date.now() + slot.keepAliveMs
    slot.timer = setTimeout(() => {
      if ((slot.loaded?.active ?? 0) === 0) {
        log.info('unloading idle model', { model: slot.model.name })
        void dropSlot(slot)
      }
    }, slot.keepAliveMs)
    slot.timer.unref()
  }

  const evictIfFull = async () => {
    while (slots.size >= init.maxLoadedModels) {
      const idle = [...slots.values()]
        .filter((s) => (s.loaded?.active ?? 1) === 0)
        .sort((a, b) => a.lastUsed - b.lastUsed)[0]
      if (!idle) return // all busy: allow going over rather than failing a request
      log.info('evicting model to make room', { model: idle.model.name })
      await dropSlot(idle)
    }
  }

  const acquire = async (
    model: ModelRecord,
    contextSize: number,
    keepAliveMs: number,
  ): Promise<{ slot: Slot; loadMs: number }> => {
    const key = `${model.digest}/${contextSize}`
    let slot = slots.get(key)
    let loadMs = 0
    if (!slot) {
      // Ollama reloads when num_ctx changes: drop runners of the same model with another size.
      for (const other of slots.values()) if (other.model.digest === model.digest) await dropSlot(other)
      await evictIfFull()
      init.checkCanLoad?.(model, contextSize, init.parallel)
      const started = performance.now()
      const engine = init.engine?.()
      const runner = startRunner({
        launcher,
        logger: log,
        modelPath: model.path,
        contextSize,
        parallel: init.parallel,
        threads: init.threads,
        ...(init.streamWindowMs !== undefined && { tokenWindowMs: init.streamWindowMs }),
        ...(engine?.kind === 'llama-server' && { llamaServer: engine.path }),
      })
      const fresh: Slot = {
        key,
        model,
        runner,
        keepAliveMs,
        expiresAt: Number.POSITIVE_INFINITY,
        lastUsed: Date.now(),
      }
      slots.set(key, fresh)
      slot = fresh
      runner.then(
        (r) => {
          fresh.loaded = r
          void r.exited.then(() => {
            if (slots.get(key) === fresh) {
              log.warn('runner exited', { model: model.name, pid: r.pid })
              slots.delete(key)
              clearTimeout(fresh.timer)
            }
          })
        },
        () => {
          if (slots.get(key) === fresh) slots.delete(key)
        },
      )
      await runner
      loadMs = performance.now() - started
    }
    slot.keepAliveMs = keepAliveMs
    slot.lastUsed = Date.now()
    clearTimeout(slot.timer)
    await slot.runner
    return { slot, loadMs }
  }

  return {
    async *generate(req) {
      const started = performance.now()
      const contextSize = effectiveContextSize(req.contextSize ?? init.contextSize, req.model)
      const { slot, loadMs } = await acquire(req.model, contextSize, req.keepAliveMs ?? init.keepAliveMs)
      const runner = await slot.runner
      try {
        for await (const ev of runner.generate(
          { mode: req.mode, prompt: req.prompt, messages: req.messages, options: req.options },
          req.signal,
        )) {
          if (ev.type === 'token') yield ev
          else yield { type: 'done', stats: ev.stats, loadMs, totalMs: performance.now() - started }
        }
      } finally {
        slot.lastUsed = Date.now()
        // The request's own channel is released synchronously, so `active` is already current.
        armKeepAlive(slot)
      }
    },
    async score({ model, ...req }) {
      const contextSize = effectiveContextSize(init.contextSize, model)
      const { slot } = await acquire(model, contextSize, init.keepAliveMs)
      try {
        return await (await slot.runner).score(req)
      } finally {
        slot.lastUsed = Date.now()
        armKeepAlive(slot)
      }
    },
    async load(model, keepAliveMs) {
      const contextSize = effectiveContextSize(init.contextSize, model)
      const { slot, loadMs } = await acquire(model, contextSize, keepAliveMs ?? init.keepAliveMs)
      if (slot.keepAliveMs === 0) await dropSlot(slot)
      else armKeepAlive(slot)
      return loadMs
    },
    ps() {
      return [...slots.values()]
        .filter((s) => s.loaded)
        .map((s) => ({
          name: s.model.name,
          digest: s.model.digest,
          size: s.model.size,
          contextSize: s.loaded!.contextSize,
          pid: s.loaded!.pid,
          active: s.loaded!.active,
          buildType: s.loaded!.buildType,
          threads: s.loaded!.threads,
          expiresAt: s.loaded!.active > 0 ? Date.now() + s.keepAliveMs : s.expiresAt,
        }))
    },
    async unload(digest) {
      const matching = [...slots.values()].filter((s) => s.model.digest === digest)
      await Promise.all(matching.map(dropSlot))
      return matching.length > 0
    },
    async stop() {
      await Promise.all([...slots.values()].map(dropSlot))
    },
  }
}
