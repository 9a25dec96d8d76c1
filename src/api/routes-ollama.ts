// Ollama-compatible routes: the same paths, field names, NDJSON streaming and durations
// in nanoseconds, so the official `ollama` clients and tools work against the daemon.

import type { IncomingMessage, ServerResponse } from 'node:http'
import { parseDuration } from '../config/schema.ts'
import { SubstrateError } from '../errors.ts'
import type { ModelRecord } from '../models/types.ts'
import type { ChatMessage, GenerationStats } from '../runtime/protocol.ts'
import { VERSION } from '../version.ts'
import { createStreamWriter, disconnectSignal, readJson, sendJson } from './http.ts'
import {
  type InferenceComponents,
  infer,
  locateModel,
  type MeshServed,
  samplingFromOllama,
} from './inference.ts'
import type { Route } from './router.ts'
import { servedJson } from './routes-mesh.ts'
import {
  chatRequestSchema,
  generateRequestSchema,
  modelNameRequestSchema,
  type OllamaModelDetails,
  type OllamaPsModel,
  type OllamaTagsModel,
  pullRequestSchema,
} from './types.ts'

export type OllamaRouteComponents = InferenceComponents

const ns = (ms: number) => Math.round(ms * 1e6)

const remoteModelsOf = (mesh: NonNullable<InferenceComponents['mesh']>) => mesh.remoteModels()

export function ollamaDetails(m: ModelRecord): OllamaModelDetails {
  return {
    parent_model: '',
    format: m.details.format,
    family: m.details.family,
    families: [m.details.family],
    parameter_size: m.details.parameterSize,
    quantization_level: m.details.quantization,
  }
}

function keepAliveMs(value: string | number | undefined): number | undefined {
  if (value === undefined) return undefined
  return parseDuration(value)
}

function finalFields(ev: { stats: GenerationStats; loadMs: number; totalMs: number; mesh?: MeshServed }) {
  const { stats, loadMs, totalMs } = ev
  return {
    // A native extension: who served a mesh job and the receipt; Ollama's clients ignore it.
    ...(ev.mesh === undefined ? {} : { substrate: servedJson(ev.mesh) }),
    done_reason: stats.reason,
    total_duration: ns(totalMs),
    load_duration: ns(loadMs),
    prompt_eval_count: stats.promptTokens,
    prompt_eval_duration: ns(stats.promptEvalMs),
    eval_count: stats.outputTokens,
    eval_duration: ns(stats.evalMs),
  }
}

/** Ollama's `parameters` text: one "key value" line per value, a list repeated per item. */
function formatParameters(params: Record<string, unknown>): string {
  const lines: string[] = []
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value])
      lines.push(`${key.padEnd(30)} ${JSON.stringify(v)}`)
  }
  return lines.join('\n')
}

function modelfileOf(path: string, template: string, system: string | undefined, parameters: string): string {
  const quote = (text: string) => `"""${text}"""`
  const lines = [`FROM ${path}`]
  if (template !== '') lines.push(`TEMPLATE ${quote(template)}`)
  if (system !== undefined) lines.push(`SYSTEM ${quote(system)}`)
  for (const line of parameters === '' ? [] : parameters.split('\n')) lines.push(`PARAMETER ${line}`)
  return `${lines.join('\n')}\n`
}

type Shape = (text: string) => Record<string, unknown>

/** Runs one inference and answers either as an NDJSON stream or as one JSON object. */
async function respond(
  c: OllamaRouteComponents,
  req: IncomingMessage,
  res: ServerResponse,
  model: string,
  stream: boolean,
  shape: Shape,
  run: Parameters<typeof infer>[1],
) {
  const signal = disconnectSignal(req, res)
  const events = infer(c, { ...run, signal })
  const base = () => ({ model, created_at: new Date().toISOString() })
  if (!stream) {
    let text = ''
    for await (const ev of events) {
      if (ev.type === 'token') text += ev.text
      else
        sendJson(res, 200, {
          ...base(),
          ...shape(text),
          done: true,
          ...finalFields(ev),
        })
    }
    return
  }
  // Resolve the model and start the runner before committing to a 200 status.
  const first = await events.next()
  const out = createStreamWriter(res, 'application/x-ndjson')
  for (let it = first; !it.done; it = await events.next()) {
    const ev = it.value
    if (ev.type === 'token')
      await out.write(`${JSON.stringify({ ...base(), ...shape(ev.text), done: false })}\n`)
    else out.end(`${JSON.stringify({ ...base(), ...shape(''), done: true, ...finalFields(ev) })}\n`)
  }
}

async function loadOrUnload(
  c: OllamaRouteComponents,
  res: ServerResponse,
  name: string,
  keepAlive: number | undefined,
  shape: Shape,
) {
  const where = await locateModel(c, name)
  const base = { model: name, created_at: new Date().toISOString(), ...shape('') }
  // A mesh model loads on whichever peer takes the job; there is nothing to load or unload here.
  if (!('local' in where)) {
    sendJson(res, 200, { ...base, done: true, done_reason: keepAlive === 0 ? 'unload' : 'load' })
    return
  }
  const model = where.local
  if (keepAlive === 0) {
    await c.runtime.unload(model.digest)
    sendJson(res, 200, { ...base, done: true, done_reason: 'unload' })
    return
  }
  const loadMs = await c.runtime.load(model, keepAlive)
  sendJson(res, 200, { ...base, done: true, done_reason: 'load', load_duration: ns(loadMs) })
}

export function ollamaRoutes(c: OllamaRouteComponents): Route[] {
  return [
    {
      method: 'POST',
      path: '/api/generate',
      handler: async (req, res) => {
        const body = await readJson(req, generateRequestSchema)
        const keepAlive = keepAliveMs(body.keep_alive)
        const shape: Shape = (text) => ({ response: text })
        if (body.prompt === undefined || body.prompt === '')
          return loadOrUnload(c, res, body.model, keepAlive, shape)
        const raw = body.raw === true
        const messages: ChatMessage[] = []
        if (body.system) messages.push({ role: 'system', content: body.system })
        messages.push({ role: 'user', content: body.prompt })
        await respond(c, req, res, body.model, body.stream !== false, shape, {
          model: body.model,
          mode: raw ? 'completion' : 'chat',
          prompt: raw ? body.prompt : undefined,
          messages: raw ? undefined : messages,
          options: samplingFromOllama(body.options),
          contextSize: body.options?.num_ctx,
          keepAliveMs: keepAlive,
        })
      },
    },
    {
      method: 'POST',
      path: '/api/chat',
      handler: async (req, res) => {
        const body = await readJson(req, chatRequestSchema)
        const keepAlive = keepAliveMs(body.keep_alive)
        const shape: Shape = (text) => ({ message: { role: 'assistant', content: text } })
        if (body.messages.length === 0) return loadOrUnload(c, res, body.model, keepAlive, shape)
        const messages = body.messages.map(
          (m): ChatMessage => ({
            role: m.role === 'tool' ? 'user' : m.role,
            content: m.content,
          }),
        )
        await respond(c, req, res, body.model, body.stream !== false, shape, {
          model: body.model,
          mode: 'chat',
          messages,
          options: samplingFromOllama(body.options),
          contextSize: body.options?.num_ctx,
          keepAliveMs: keepAlive,
        })
      },
    },
    {
      method: 'GET',
      path: '/api/tags',
      handler: async (_req, res) => {
        const models: OllamaTagsModel[] = c.models.list().map((m) => ({
          name: m.name,
          model: m.name,
          modified_at: m.modifiedAt,
          size: m.size,
          digest: m.digest.replace(/^sha256:/, ''),
          details: ollamaDetails(m),
        }))
        // Models only peers hold, marked `remote` (an extension field the official client ignores).
        const local = new Set(models.map((m) => m.digest))
        for (const r of c.mesh === undefined ? [] : remoteModelsOf(c.mesh)) {
          const digest = r.digest.replace(/^sha256:/, '')
          if (local.has(digest)) continue
          local.add(digest)
          models.push({
            name: r.name,
            model: r.name,
            modified_at: new Date(0).toISOString(),
            size: 0,
            digest,
            details: {
              parent_model: '',
              format: 'gguf',
              family: 'remote',
              families: ['remote'],
              parameter_size: '',
              quantization_level: '',
            },
            remote: true,
            peers: r.peers.length,
          })
        }
        sendJson(res, 200, { models })
      },
    },
    {
      method: 'POST',
      path: '/api/show',
      handler: async (req, res) => {
        const body = await readJson(req, modelNameRequestSchema)
        const m = await c.models.resolve((body.model ?? body.name)!)
        const extras = m.extras ?? {}
        const parameters = formatParameters(extras.params ?? {})
        // The published template (an Ollama Go template) is shown; generation itself uses the
        // GGUF's own chat template, which node-llama-cpp applies.
        const template = extras.template ?? m.details.chatTemplate ?? ''
        sendJson(res, 200, {
          license: extras.license ?? '',
          modelfile: modelfileOf(m.path, template, extras.system, parameters),
          parameters,
          template,
          ...(extras.system === undefined ? {} : { system: extras.system }),
          ...(m.source === undefined ? {} : { substrate: { source: m.source } }),
          details: ollamaDetails(m),
          model_info: {
            'general.architecture': m.details.architecture,
            'general.parameter_count': m.details.parameterCount,
            [`${m.details.architecture}.context_length`]: m.details.contextLength,
          },
          capabilities: ['completion'],
          modified_at: m.modifiedAt,
        })
      },
    },
    {
      method: 'GET',
      path: '/api/ps',
      handler: async (_req, res) => {
        const byDigest = new Map(c.models.list().map((m) => [m.digest, m]))
        const models: OllamaPsModel[] = c.runtime.ps().map((p) => {
          const m = byDigest.get(p.digest)
          return {
            name: p.name,
            model: p.name,
            size: p.size,
            digest: p.digest.replace(/^sha256:/, ''),
            details: m
              ? ollamaDetails(m)
              : {
                  parent_model: '',
                  format: 'gguf',
                  family: '',
                  families: [],
                  parameter_size: '',
                  quantization_level: '',
                },
            expires_at: Number.isFinite(p.expiresAt)
              ? new Date(p.expiresAt).toISOString()
              : '2318-11-26T00:00:00Z',
            size_vram: 0,
            context_length: p.contextSize,
          }
        })
        sendJson(res, 200, { models })
      },
    },
    {
      method: 'POST',
      path: '/api/pull',
      handler: async (req, res) => {
        const body = await readJson(req, pullRequestSchema)
        const source = (body.model ?? body.name)!
        const signal = disconnectSignal(req, res)
        // A source reference is downloaded; any other name must be local or built in.
        const pullable = c.models.isPullable(source)
        const pull = (onProgress?: (e: object) => void) =>
          pullable
            ? c.models.pull(source, { name: body.as, sha256: body.sha256, onProgress, signal })
            : c.models.resolve(source)
        if (body.stream === false) {
          await pull()
          sendJson(res, 200, { status: 'success' })
          return
        }
        const out = createStreamWriter(res, 'application/x-ndjson')
        // Ollama's status lines: "pulling manifest", "pulling <digest>" with total and
        // completed, "verifying sha256 digest", "success" (the store emits each of them).
        if (!pullable) await out.write(`${JSON.stringify({ status: `resolving ${source}` })}\n`)
        await pull((e) => void out.write(`${JSON.stringify(e)}\n`).catch(() => {}))
        out.end(pullable ? '' : `${JSON.stringify({ status: 'success' })}\n`)
      },
    },
    {
      method: 'DELETE',
      path: '/api/delete',
      handler: async (req, res) => {
        const body = await readJson(req, modelNameRequestSchema)
        const name = (body.model ?? body.name)!
        const existing = c.models.list().find((m) => m.name === name || m.name === `${name}:latest`)
        if (!existing) throw new SubstrateError('E_MODEL_NOT_FOUND', `model '${name}' not found`)
        await c.models.remove(existing.name)
        if (!c.models.list().some((m) => m.digest === existing.digest))
          await c.runtime.unload(existing.digest)
        sendJson(res, 200, {})
      },
    },
    {
      method: 'GET',
      path: '/api/version',
      handler: async (_req, res) => sendJson(res, 200, { version: VERSION }),
    },
  ]
}
