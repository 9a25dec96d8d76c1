// The one path from an API request to generated tokens, shared by the Ollama and OpenAI
// routes: validate the sampling options, resolve the model, run it — here when this node
// holds the model, on the mesh when it does not (or when every local sequence is busy and a
// peer has the model loaded). Both give the same event stream, so the routes never know.

import { SubstrateError, toSubstrateError } from '../errors.ts'
import type { CountersignedReceipt } from '../mesh/job-protocol.ts'
import type { Mesh, RemoteModel } from '../mesh/mesh.ts'
import { normalizeModelName } from '../models/store.ts'
import type { ModelRecord, ModelStore } from '../models/types.ts'
import type { GenerationStats, SamplingOptions } from '../runtime/protocol.ts'
import type { GenerateRequest, Runtime } from '../runtime/runtime.ts'
import { type OllamaOptions, ollamaOptionsSchema } from './types.ts'

/** Above this a token limit is a mistake, not a wish: no context is that long. */
export const MAX_PREDICT = 1_048_576

/** A runtime request that names its model instead of holding the resolved record. */
export type InferenceRequest = Omit<GenerateRequest, 'model'> & { model: string }

/** The most output tokens a mesh job may ask for (the manifest's limit). */
export const MESH_MAX_TOKENS = 1_000_000

/** Who served a mesh job, and the receipt both sides signed. */
export interface MeshServed {
  worker: string
  job: string
  receipt: CountersignedReceipt
  /** Set when the worker took over mid-stream from one that failed. */
  resumedAfterTokens?: number
}

export type InferenceEvent =
  | { type: 'token'; text: string }
  | { type: 'done'; stats: GenerationStats; loadMs: number; totalMs: number; mesh?: MeshServed }

export interface InferenceComponents {
  models: ModelStore
  runtime: Runtime
  /** Absent when the mesh is off: then only local models answer. */
  mesh?: Pick<Mesh, 'findRemoteModel' | 'remoteModels' | 'generate' | 'capacity'> | undefined
  /** Sequences per loaded model (runtime.parallel): all in use means local capacity is busy. */
  parallel?: number
  /** Called with each receipt of a job this node asked the mesh for. */
  onReceipt?: (served: MeshServed) => void
}

export type Located = { local: ModelRecord } | { remote: RemoteModel }

/**
 * Where a model name can run: a model this node holds runs here; one it does not hold runs on
 * a peer that offers it; only when no peer does is a built-in model generated here (so a node
 * that removed substrate-tiny asks the mesh for it, as a user who removed it would expect).
 * Throws E_MODEL_NOT_FOUND naming both places.
 */
export async function locateModel(c: InferenceComponents, name: string): Promise<Located> {
  const held = c.models.list().find((m) => m.name === normalizedOrSame(name) || m.digest === name)
  if (held !== undefined) return { local: held }
  const remote = c.mesh?.findRemoteModel(name)
  if (remote !== undefined) return { remote }
  try {
    return { local: await c.models.resolve(name) }
  } catch (err) {
    const error = toSubstrateError(err)
    if (error.code !== 'E_MODEL_NOT_FOUND' || c.mesh === undefined) throw err
    const peers = c.mesh.capacity.view().length
    throw new SubstrateError(
      'E_MODEL_NOT_FOUND',
      `model '${name}' is not on this node, and none of the ${peers} peer${peers === 1 ? '' : 's'} in the mesh offers it`,
      { hint: "pull or import it here ('substrate pull'), or see what peers offer with 'substrate peers'" },
    )
  }
}

function normalizedOrSame(name: string): string {
  try {
    return normalizeModelName(name)
  } catch {
    return name // resolve() reports the invalid name
  }
}

/** Ollama's num_predict: -1 (and -2, "fill the context") mean no limit; 0 means no tokens. */
export function maxTokensFromPredict(numPredict: number | undefined | null): number | undefined {
  if (numPredict === undefined || numPredict === null || numPredict === -1 || numPredict === -2)
    return undefined
  if (!Number.isInteger(numPredict) || numPredict < -2) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `num_predict must be -1, -2 or a token count ≥ 0, not ${numPredict}`,
    )
  }
  if (numPredict > MAX_PREDICT) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `num_predict ${numPredict} is absurd: the limit is ${MAX_PREDICT}`,
    )
  }
  return numPredict
}

export function samplingFromOllama(options: OllamaOptions | undefined): SamplingOptions {
  const o = options ?? {}
  return {
    temperature: o.temperature,
    topK: o.top_k,
    topP: o.top_p,
    minP: o.min_p,
    seed: o.seed,
    repeatPenalty: o.repeat_penalty,
    maxTokens: maxTokensFromPredict(o.num_predict),
    stop: o.stop,
  }
}

export async function* infer(c: InferenceComponents, req: InferenceRequest): AsyncGenerator<InferenceEvent> {
  const where = await locateModel(c, req.model)
  if (req.options.maxTokens === 0) {
    yield {
      type: 'done',
      stats: { reason: 'length', promptTokens: 0, outputTokens: 0, promptEvalMs: 0, evalMs: 0 },
      loadMs: 0,
      totalMs: 0,
    }
    return
  }
  if ('remote' in where) {
    yield* inferOnMesh(c, where.remote, req)
    return
  }
  const model = where.local
  // Every local sequence busy and a peer has the model loaded: it answers sooner than our queue.
  // Only "loaded" counts, so we never trade a short wait here for a model load there.
  const peer = localIsBusy(c, model) ? c.mesh?.findRemoteModel(model.digest) : undefined
  if (peer !== undefined && peer.loadedOn.length > 0) {
    let started = false
    try {
      // No waiting for a mesh slot: the local queue is the fallback.
      for await (const ev of inferOnMesh(c, peer, req, { busyWaitMs: 0 })) {
        started = true
        yield ev
      }
      return
    } catch (err) {
      // No peer took it after all: wait for a local sequence as we would have.
      if (started || req.signal?.aborted === true) throw err
    }
  }
  yield* c.runtime.generate({ ...withModelDefaults(model, req), model })
}

/**
 * A pulled model's published defaults (Ollama's params and system layers) fill in what the
 * request left unset: sampling options, num_ctx and, for a chat without one, the system
 * prompt. A param this runtime does not know, or of the wrong type, is ignored.
 */
export function withModelDefaults(model: ModelRecord, req: InferenceRequest): InferenceRequest {
  const extras = model.extras
  if (extras === undefined) return req
  const known: OllamaOptions = {}
  for (const [key, value] of Object.entries(extras.params ?? {})) {
    const field = ollamaOptionsSchema.shape[key as keyof OllamaOptions]
    const parsed = field?.safeParse(value)
    if (parsed?.success) Object.assign(known, { [key]: parsed.data })
  }
  const defined = (o: object) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined))
  const out: InferenceRequest = {
    ...req,
    options: { ...defined(samplingFromOllama(known)), ...defined(req.options) },
  }
  const contextSize = req.contextSize ?? known.num_ctx
  if (contextSize !== undefined) out.contextSize = contextSize
  if (
    req.mode === 'chat' &&
    extras.system &&
    req.messages &&
    !req.messages.some((m) => m.role === 'system')
  ) {
    out.messages = [{ role: 'system', content: extras.system }, ...req.messages]
  }
  return out
}

function localIsBusy(c: InferenceComponents, model: ModelRecord): boolean {
  if (c.mesh === undefined || c.parallel === undefined) return false
  const runners = c.runtime.ps().filter((p) => p.digest === model.digest)
  return runners.length > 0 && runners.every((r) => r.active >= c.parallel!)
}

async function* inferOnMesh(
  c: InferenceComponents,
  remote: RemoteModel,
  req: InferenceRequest,
  options: { busyWaitMs?: number } = {},
): AsyncGenerator<InferenceEvent> {
  const mesh = c.mesh!
  const started = performance.now()
  const maxTokens = Math.min(req.options.maxTokens ?? MESH_MAX_TOKENS, MESH_MAX_TOKENS)
  const events = mesh.generate(
    {
      model: remote.digest,
      mode: req.mode,
      prompt: req.prompt,
      messages: req.messages,
      options: req.options,
      maxTokens,
    },
    req.signal === undefined ? options : { ...options, signal: req.signal },
  )
  try {
    for await (const ev of events) {
      if (ev.type === 'token') {
        yield { type: 'token', text: ev.text }
        continue
      }
      const served: MeshServed = { worker: ev.worker, job: ev.job, receipt: ev.receipt }
      if (ev.resumedAfterTokens !== undefined) served.resumedAfterTokens = ev.resumedAfterTokens
      c.onReceipt?.(served)
      yield {
        type: 'done',
        stats: ev.stats,
        loadMs: ev.loadMs,
        totalMs: performance.now() - started,
        mesh: served,
      }
    }
  } catch (err) {
    const error = toSubstrateError(err)
    if (error.code !== 'E_MODEL_NOT_FOUND') throw error
    throw new SubstrateError(
      'E_MODEL_NOT_FOUND',
      `model '${req.model}' is not on this node, and the peers that offered it refused: ${error.message}`,
      {
        hint: "pull or import it here ('substrate pull'), or see what peers offer with 'substrate peers'",
        cause: err,
      },
    )
  }
}
