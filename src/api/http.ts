// HTTP plumbing shared by every route: bounded body reading, strict UTF-8 and JSON
// decoding, schema validation, and the one place a SubstrateError becomes a response.

import type { IncomingMessage, ServerResponse } from 'node:http'
import type { z } from 'zod'
import { SubstrateError, toSubstrateError } from '../errors.ts'

export const MAX_BODY_BYTES = 16 * 1024 * 1024

export async function readBody(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<Buffer> {
  const declared = Number(req.headers['content-length'])
  if (Number.isFinite(declared) && declared > limit) {
    throw new SubstrateError(
      'E_PAYLOAD_TOO_LARGE',
      `request body is ${declared} bytes; the limit is ${limit}`,
    )
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > limit) throw new SubstrateError('E_PAYLOAD_TOO_LARGE', `request body exceeds ${limit} bytes`)
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

/** Parses a JSON body against a schema; an empty body counts as `{}`. */
export async function readJson<S extends z.ZodType>(req: IncomingMessage, schema: S): Promise<z.infer<S>> {
  const bytes = await readBody(req)
  let text: string
  try {
    text = strictUtf8.decode(bytes)
  } catch {
    throw new SubstrateError('E_INVALID_UTF8', 'request body is not valid UTF-8')
  }
  let value: unknown = {}
  if (text.trim() !== '') {
    try {
      value = JSON.parse(text)
    } catch (err) {
      throw new SubstrateError('E_INVALID_JSON', `request body is not valid JSON: ${(err as Error).message}`)
    }
  }
  const parsed = schema.safeParse(value)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    const where = issue?.path.length ? `${issue.path.join('.')}: ` : ''
    throw new SubstrateError('E_BAD_REQUEST', `invalid request: ${where}${issue?.message ?? 'bad value'}`)
  }
  return parsed.data
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

export type ErrorStyle = 'ollama' | 'openai'

export function sendError(res: ServerResponse, err: unknown, style: ErrorStyle = 'ollama'): void {
  const e = toSubstrateError(err)
  if (res.headersSent) {
    // Mid-stream: the status is gone; say it in the stream's own format, then end.
    if (!res.writableEnded) {
      res.end(
        style === 'openai'
          ? `data: ${JSON.stringify({ error: openaiError(e) })}\n\n`
          : `${JSON.stringify(e.toJSON())}\n`,
      )
    }
    return
  }
  sendJson(res, e.status, style === 'openai' ? { error: openaiError(e) } : e.toJSON())
}

function openaiError(e: SubstrateError) {
  const type =
    e.status >= 500 ? 'server_error' : e.status === 401 ? 'authentication_error' : 'invalid_request_error'
  return { message: e.message, type, param: null, code: e.code }
}

/** A streaming writer that respects backpressure and notices a vanished client. */
export function createStreamWriter(res: ServerResponse, contentType: string) {
  res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-cache', 'x-accel-buffering': 'no' })
  res.flushHeaders()
  return {
    async write(chunk: string): Promise<void> {
      if (res.destroyed || res.writableEnded) throw new SubstrateError('E_CANCELLED', 'client disconnected')
      if (!res.write(chunk)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            res.off('drain', done)
            res.off('close', done)
            resolve()
          }
          res.on('drain', done)
          res.on('close', done)
        })
      }
    },
    end(chunk?: string) {
      if (!res.writableEnded) res.end(chunk)
    },
  }
}

/** An AbortSignal that fires when the client goes away before the response is finished. */
export function disconnectSignal(req: IncomingMessage, res: ServerResponse): AbortSignal {
  const controller = new AbortController()
  res.on('close', () => {
    if (!res.writableFinished) controller.abort(new SubstrateError('E_CANCELLED', 'client disconnected'))
  })
  req.on('aborted', () => controller.abort(new SubstrateError('E_CANCELLED', 'client disconnected')))
  return controller.signal
}
