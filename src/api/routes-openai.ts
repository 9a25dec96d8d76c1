// OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, with SSE
// streaming and `usage`, so the official `openai` clients work against the daemon.

import { randomBytes } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { SubstrateError } from '../errors.ts'
import type { ChatMessage, DoneReason, SamplingOptions } from '../runtime/protocol.ts'
import { createStreamWriter, disconnectSignal, readJson, sendJson } from './http.ts'
import { type InferenceComponents, infer, MAX_PREDICT } from './inference.ts'
import type { Route } from './router.ts'
import { servedJson } from './routes-mesh.ts'
import {
  type OpenAIChatRequest,
  type OpenAICompletionRequest,
  openaiChatRequestSchema,
  openaiCompletionRequestSchema,
} from './types.ts'

export type OpenAIRouteComponents = InferenceComponents

const finishReason = (r: DoneReason) => (r === 'length' ? 'length' : 'stop')

function sampling(
  body: OpenAIChatRequest | OpenAICompletionRequest,
  maxTokens: number | null | undefined,
): SamplingOptions {
  if (maxTokens !== null && maxTokens !== undefined && (maxTokens < 0 || maxTokens > MAX_PREDICT)) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `max_tokens must be between 0 and ${MAX_PREDICT}, not ${maxTokens}`,
    )
  }
  const stop =
    body.stop === null || body.stop === undefined
      ? undefined
      : typeof body.stop === 'string'
        ? [body.stop]
        : body.stop
  return {
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    seed: body.seed ?? undefined,
    maxTokens: maxTokens ?? undefined,
    stop,
  }
}

function contentText(content: OpenAIChatRequest['messages'][number]['content']): string {
  if (content === null) return ''
  if (typeof content === 'string') return content
  return content.map((p) => p.text ?? '').join('')
}

type Kind = 'chat' | 'text'

async function complete(
  c: OpenAIRouteComponents,
  req: IncomingMessage,
  res: ServerResponse,
  kind: Kind,
  body: OpenAIChatRequest | OpenAICompletionRequest,
  run: { mode: 'chat' | 'completion'; prompt?: string; messages?: ChatMessage[]; options: SamplingOptions },
) {
  const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`
  const created = Math.floor(Date.now() / 1000)
  const object = kind === 'chat' ? 'chat.completion' : 'text_completion'
  const events = infer(c, { model: body.model, ...run, signal: disconnectSignal(req, res) })
  const usage = (p: number, o: number) => ({ prompt_tokens: p, completion_tokens: o, total_tokens: p + o })
  const head = { id, created, model: body.model, system_fingerprint: 'substrate' }

  if (!body.stream) {
    let text = ''
    for await (const ev of events) {
      if (ev.type === 'token') {
        text += ev.text
        continue
      }
      const choice =
        kind === 'chat'
          ? {
              index: 0,
              message: { role: 'assistant', content: text },
              logprobs: null,
              finish_reason: finishReason(ev.stats.reason),
            }
          : { index: 0, text, logprobs: null, finish_reason: finishReason(ev.stats.reason) }
      sendJson(res, 200, {
        ...head,
        object,
        choices: [choice],
        usage: usage(ev.stats.promptTokens, ev.stats.outputTokens),
        ...(ev.mesh === undefined ? {} : { substrate: servedJson(ev.mesh) }),
      })
    }
    return
  }

  const chunkObject = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion'
  const chunk = (text: string, finish: string | null, first = false) =>
    kind === 'chat'
      ? {
          index: 0,
          delta: first ? { role: 'assistant', content: text } : finish ? {} : { content: text },
          logprobs: null,
          finish_reason: finish,
        }
      : { index: 0, text, logprobs: null, finish_reason: finish }
  const sse = (data: unknown) => `data: ${JSON.stringify(data)}\n\n`
  const first = await events.next()
  const out = createStreamWriter(res, 'text/event-stream')
  let sentFirst = false
  for (let it = first; !it.done; it = await events.next()) {
    const ev = it.value
    if (ev.type === 'token') {
      await out.write(sse({ ...head, object: chunkObject, choices: [chunk(ev.text, null, !sentFirst)] }))
      sentFirst = true
      continue
    }
    await out.write(
      sse({
        ...head,
        object: chunkObject,
        choices: [chunk('', finishReason(ev.stats.reason))],
        // Extension: who served a mesh job, and the receipt; OpenAI's clients ignore it.
        ...(ev.mesh === undefined ? {} : { substrate: servedJson(ev.mesh) }),
      }),
    )
    if (body.stream_options?.include_usage) {
      await out.write(
        sse({
          ...head,
          object: chunkObject,
          choices: [],
          usage: usage(ev.stats.promptTokens, ev.stats.outputTokens),
        }),
      )
    }
    out.end('data: [DONE]\n\n')
  }
}

export function openaiRoutes(c: OpenAIRouteComponents): Route[] {
  const modelObject = (name: string, modifiedAt: string) => ({
    id: name,
    object: 'model',
    created: Math.floor(new Date(modifiedAt).getTime() / 1000) || 0,
    owned_by: 'substrate',
  })
  return [
    {
      method: 'POST',
      path: '/v1/chat/completions',
      handler: async (req, res) => {
        const body = await readJson(req, openaiChatRequestSchema)
        const messages = body.messages.map(
          (m): ChatMessage => ({
            role: m.role === 'developer' ? 'system' : m.role === 'tool' ? 'user' : m.role,
            content: contentText(m.content),
          }),
        )
        await complete(c, req, res, 'chat', body, {
          mode: 'chat',
          messages,
          options: sampling(body, body.max_completion_tokens ?? body.max_tokens),
        })
      },
    },
    {
      method: 'POST',
      path: '/v1/completions',
      handler: async (req, res) => {
        const body = await readJson(req, openaiCompletionRequestSchema)
        const prompt = typeof body.prompt === 'string' ? body.prompt : body.prompt[0]!
        await complete(c, req, res, 'text', body, {
          mode: 'completion',
          prompt,
          options: sampling(body, body.max_tokens ?? 16),
        })
      },
    },
    {
      method: 'GET',
      path: '/v1/models',
      handler: async (_req, res) => {
        sendJson(res, 200, {
          object: 'list',
          data: [
            ...c.models.list().map((m) => modelObject(m.name, m.modifiedAt)),
            ...(c.mesh?.remoteModels() ?? [])
              .filter((r) => !c.models.list().some((m) => m.digest === r.digest))
              .map((r) => ({
                ...modelObject(r.name, new Date(0).toISOString()),
                owned_by: 'substrate-mesh',
              })),
          ],
        })
      },
    },
    {
      method: 'GET',
      path: '/v1/models/*',
      handler: async (_req, res, url) => {
        const name = decodeURIComponent(url.pathname.slice('/v1/models/'.length))
        const m = await c.models.resolve(name)
        sendJson(res, 200, modelObject(m.name, m.modifiedAt))
      },
    },
  ]
}
