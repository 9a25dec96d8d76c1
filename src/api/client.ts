// A typed client for the daemon's HTTP API: the CLI's only way to reach the daemon, and
// usable by anyone else. Like Ollama's api/client.go it speaks exactly the API a user could
// call with curl. It imports only types from the rest of the project (erased at run time),
// so loading it costs almost nothing.

import { type ErrorCode, isErrorCode, SubstrateError } from '../errors.ts'
import type { HardwareInfo } from '../hardware/detect.ts'
import type { ModelRecord, ProgressEvent } from '../models/types.ts'
import type { LoadedModel } from '../runtime/runtime.ts'
import type { GpuAccess, LayerReport } from '../sandbox/doctor.ts'
import type { SandboxStatus } from '../sandbox/select.ts'
import type {
  ChatRequest,
  CreditsResponse,
  GenerateRequest,
  LedgerBalancesResponse,
  LedgerOpInfo,
  LedgerStatsResponse,
  LedgerVerifyResponse,
  LedgerVouchResponse,
  OllamaModelDetails,
  OllamaPsModel,
  OllamaTagsModel,
  PeersResponse,
  ReceiptInfo,
  ServedInfo,
} from './types.ts'

export interface ClientInit {
  /** e.g. "http://127.0.0.1:11435" */
  baseUrl: string
  token?: string | undefined
  fetch?: typeof globalThis.fetch
}

/** Present on the final (`done: true`) chunk; durations are nanoseconds, as Ollama's. */
export interface GenerationTimings {
  done_reason?: string
  total_duration?: number
  load_duration?: number
  prompt_eval_count?: number
  prompt_eval_duration?: number
  eval_count?: number
  eval_duration?: number
}
export interface GenerateChunk extends GenerationTimings {
  model: string
  created_at: string
  response: string
  done: boolean
  /** on the final chunk of an answer a peer served: who, and the receipt */
  substrate?: ServedInfo
}
export interface ChatChunk extends GenerationTimings {
  model: string
  created_at: string
  message: { role: string; content: string }
  done: boolean
  /** on the final chunk of an answer a peer served: who, and the receipt */
  substrate?: ServedInfo
}
export interface ShowResponse {
  license: string
  modelfile: string
  parameters: string
  template: string
  /** the default system prompt (Ollama's system layer), when the model has one */
  system?: string
  /** native extension: the reference the model was pulled from */
  substrate?: { source?: string }
  details: OllamaModelDetails
  model_info: Record<string, unknown>
  capabilities: string[]
  modified_at: string
}
export interface StatusResponse {
  version: string
  id: string
  pid: number
  home: string
  /** the mesh listen addresses (each with /p2p/<id>); null when the mesh is off */
  mesh?: { addrs: string[] } | null
}
export interface ConfigEntry {
  key: string
  value: unknown
  source: string
}
/** A loaded runner; `expiresAt` is null when it is kept forever (JSON has no Infinity). */
/** GET /substrate/v1/doctor: the sandbox in force and every isolation layer, probed. */
export interface DoctorReport {
  backend: SandboxStatus
  layers: LayerReport[]
  gpu: GpuAccess
}

export type RunnerInfo = Omit<LoadedModel, 'expiresAt'> & { expiresAt: number | null }

export interface StreamOptions<T> {
  onChunk?: (chunk: T) => void
  signal?: AbortSignal
}
type Call = { signal?: AbortSignal }

// Only used when a non-2xx body carries no code we know (a proxy's HTML page, say).
const codeByStatus: Record<number, ErrorCode> = {
  400: 'E_BAD_REQUEST',
  401: 'E_UNAUTHORIZED',
  404: 'E_NOT_FOUND',
  409: 'E_ALREADY_RUNNING',
  413: 'E_PAYLOAD_TOO_LARGE',
  499: 'E_CANCELLED',
  502: 'E_DAEMON_UNREACHABLE',
  503: 'E_DAEMON_UNREACHABLE',
  507: 'E_INSUFFICIENT_MEMORY',
}
const unreachableCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
])

/** Turns an error line (or body) `{error, code, hint?}` into a typed error. */
export function errorFromBody(body: unknown, status?: number): SubstrateError | undefined {
  if (typeof body !== 'object' || body === null || !('error' in body)) return undefined
  const { error, code, hint } = body as { error: unknown; code?: unknown; hint?: unknown }
  const message = typeof error === 'string' ? error : JSON.stringify(error)
  const byStatus = status === undefined ? undefined : codeByStatus[status]
  const typed = isErrorCode(code) ? code : (byStatus ?? 'E_INTERNAL')
  return new SubstrateError(typed, message, typeof hint === 'string' ? { hint } : {})
}

/**
 * Yields one parsed object per line of an NDJSON body. A chunk may end mid-line (or even
 * mid-character), so bytes are buffered until a newline; an `{error, code}` line means the
 * daemon failed after it had already sent 200, and is thrown as that typed error.
 */
export async function* readNdjson(body: AsyncIterable<Uint8Array>): AsyncGenerator<unknown> {
  const decoder = new TextDecoder()
  let buffered = ''
  const parse = (line: string): unknown => {
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch {
      throw new SubstrateError('E_INTERNAL', `the daemon sent a line that is not JSON: ${line.slice(0, 80)}`)
    }
    const err = errorFromBody(value)
    if (err) throw err
    return value
  }
  for await (const bytes of body) {
    buffered += decoder.decode(bytes, { stream: true })
    let newline = buffered.indexOf('\n')
    while (newline >= 0) {
      const line = buffered.slice(0, newline).trim()
      buffered = buffered.slice(newline + 1)
      if (line !== '') yield parse(line)
      newline = buffered.indexOf('\n')
    }
  }
  const rest = (buffered + decoder.decode()).trim()
  if (rest !== '') yield parse(rest)
}

/** A fetch body as an async iterable; cancelling it when the reader stops early frees the socket. */
async function* chunksOf(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = body.getReader()
  let finished = false
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      yield value
    }
    finished = true
  } finally {
    if (!finished) await reader.cancel().catch(() => {})
    reader.releaseLock()
  }
}

/** `?a=1&b=2` from the defined values, or '' when there are none. */
function query(params: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams()
  for (const [key, value] of Object.entries(params)) if (value !== undefined) search.set(key, String(value))
  const text = search.toString()
  return text === '' ? '' : `?${text}`
}

export function createClient(init: ClientInit) {
  const base = init.baseUrl.replace(/\/+$/, '')
  const doFetch = init.fetch ?? globalThis.fetch

  /** Maps a failed fetch (or body read) to what the user should understand by it. */
  const transportError = (err: unknown, signal: AbortSignal | undefined): SubstrateError => {
    if (err instanceof SubstrateError) return err
    if (signal?.aborted) {
      const reason: unknown = signal.reason
      if (reason instanceof SubstrateError) return reason
      if (reason instanceof Error && reason.name === 'TimeoutError') {
        return new SubstrateError('E_DAEMON_UNREACHABLE', `the daemon at ${base} did not answer in time`, {
          hint: 'it may be busy or stuck; see $SUBSTRATE_HOME/logs/daemon.log',
          cause: err,
        })
      }
      return new SubstrateError('E_CANCELLED', 'cancelled', { cause: err })
    }
    const cause = (err as { cause?: { code?: unknown; errors?: Array<{ code?: unknown }> } }).cause
    const code = cause?.code ?? cause?.errors?.[0]?.code
    if (typeof code === 'string' && unreachableCodes.has(code)) {
      return new SubstrateError(
        'E_DAEMON_UNREACHABLE',
        `could not reach the substrate daemon at ${base} (${code})`,
        {
          hint: 'start it with `substrate serve`, or point --host/--port (SUBSTRATE_HOST/SUBSTRATE_PORT) at a running one',
          cause: err,
        },
      )
    }
    if (err instanceof TypeError && err.message === 'terminated') {
      return new SubstrateError('E_DAEMON_UNREACHABLE', `the connection to the daemon at ${base} was lost`, {
        hint: 'the daemon may have stopped; see $SUBSTRATE_HOME/logs/daemon.log',
        cause: err,
      })
    }
    return new SubstrateError('E_INTERNAL', err instanceof Error ? err.message : String(err), { cause: err })
  }

  const send = async (method: string, path: string, body: unknown, signal: AbortSignal | undefined) => {
    const headers: Record<string, string> = { accept: 'application/json, application/x-ndjson' }
    if (body !== undefined) headers['content-type'] = 'application/json'
    if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`
    let res: Response
    try {
      res = await doFetch(`${base}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      })
    } catch (err) {
      throw transportError(err, signal)
    }
    if (!res.ok) {
      const text = await res.text().catch(() => '')
      let parsed: unknown
      try {
        parsed = JSON.parse(text)
      } catch {
        parsed = undefined
      }
      throw (
        errorFromBody(parsed, res.status) ??
        new SubstrateError(
          codeByStatus[res.status] ?? 'E_INTERNAL',
          `the daemon answered ${res.status}: ${text.slice(0, 200) || res.statusText}`,
        )
      )
    }
    return res
  }

  const json = async <T>(method: string, path: string, body?: unknown, call: Call = {}): Promise<T> => {
    const res = await send(method, path, body, call.signal)
    try {
      return (await res.json()) as T
    } catch (err) {
      if (!(err instanceof SyntaxError)) throw transportError(err, call.signal)
      throw new SubstrateError('E_DAEMON_UNREACHABLE', `${base}${path} did not answer with JSON`, {
        hint: 'something other than a substrate daemon may be listening there; check --host/--port',
        cause: err,
      })
    }
  }

  /** Posts a streaming request; calls onChunk per line and resolves with the last one. */
  const stream = async <T>(path: string, body: object, opts: StreamOptions<T>): Promise<T> => {
    const res = await send('POST', path, body, opts.signal)
    let last: T | undefined
    try {
      if (res.body === null)
        throw new SubstrateError('E_INTERNAL', `the daemon sent an empty answer to ${path}`)
      for await (const value of readNdjson(chunksOf(res.body))) {
        last = value as T
        opts.onChunk?.(last)
      }
    } catch (err) {
      throw transportError(err, opts.signal)
    }
    if (last === undefined)
      throw new SubstrateError('E_INTERNAL', `the daemon sent an empty answer to ${path}`)
    return last
  }

  return {
    baseUrl: base,
    generate: (req: GenerateRequest, opts: StreamOptions<GenerateChunk> = {}) =>
      stream<GenerateChunk>('/api/generate', req, opts),
    chat: (req: ChatRequest, opts: StreamOptions<ChatChunk> = {}) =>
      stream<ChatChunk>('/api/chat', req, opts),
    tags: (call?: Call) => json<{ models: OllamaTagsModel[] }>('GET', '/api/tags', undefined, call),
    show: (name: string, call?: Call) => json<ShowResponse>('POST', '/api/show', { model: name }, call),
    ps: (call?: Call) => json<{ models: OllamaPsModel[] }>('GET', '/api/ps', undefined, call),
    pull: (
      req: { model: string; as?: string | undefined; sha256?: string | undefined },
      onProgress?: (event: ProgressEvent) => void,
      call: Call = {},
    ) => stream<ProgressEvent>('/api/pull', req, { onChunk: onProgress, signal: call.signal }),
    delete: (name: string, call?: Call) => json<object>('DELETE', '/api/delete', { model: name }, call),
    version: (call?: Call) => json<{ version: string }>('GET', '/api/version', undefined, call),
    status: (call?: Call) => json<StatusResponse>('GET', '/substrate/v1/status', undefined, call),
    id: (call?: Call) => json<{ id: string; publicKey: string }>('GET', '/substrate/v1/id', undefined, call),
    info: (call?: Call) => json<HardwareInfo>('GET', '/substrate/v1/info', undefined, call),
    config: (call?: Call) => json<{ entries: ConfigEntry[] }>('GET', '/substrate/v1/config', undefined, call),
    doctor: (call?: Call) => json<DoctorReport>('GET', '/substrate/v1/doctor', undefined, call),
    peers: (call?: Call) => json<PeersResponse>('GET', '/substrate/v1/peers', undefined, call),
    /** the last receipts this node signed as worker or requester, newest last */
    receipts: (call?: Call) =>
      json<{ receipts: Array<ReceiptInfo & { role: 'worker' | 'requester' }> }>(
        'GET',
        '/substrate/v1/receipts',
        undefined,
        call,
      ),
    /** a member's balance and the receipts behind it; this node's member when none is given */
    credits: (member?: string, call?: Call) =>
      json<CreditsResponse>('GET', `/substrate/v1/credits${query({ member })}`, undefined, call),
    ledgerBalances: (call?: Call) =>
      json<LedgerBalancesResponse>('GET', '/substrate/v1/ledger/balances', undefined, call),
    /** the newest ops first; of one author when given */
    ledgerLog: (opts: { author?: string | undefined; limit?: number | undefined } = {}, call?: Call) =>
      json<{ ops: LedgerOpInfo[] }>(
        'GET',
        `/substrate/v1/ledger/log${query({ author: opts.author, limit: opts.limit })}`,
        undefined,
        call,
      ),
    ledgerVerify: (call?: Call) =>
      json<LedgerVerifyResponse>('GET', '/substrate/v1/ledger/verify', undefined, call),
    ledgerStats: (call?: Call) =>
      json<LedgerStatsResponse>('GET', '/substrate/v1/ledger/stats', undefined, call),
    /** signs this node's member's vouch for another member (ledger op `vouch`) */
    vouch: (member: string, call?: Call) =>
      json<LedgerVouchResponse>('POST', '/substrate/v1/ledger/vouch', { member }, call),
    runners: (call?: Call) =>
      json<{ runners: RunnerInfo[] }>('GET', '/substrate/v1/runners', undefined, call),
    /** `path` is read by the daemon, so it must be absolute (the daemon's cwd is not ours). */
    importModel: async (
      req: { path: string; name: string },
      onProgress?: (event: ProgressEvent) => void,
      call: Call = {},
    ): Promise<ModelRecord> => {
      const last = await stream<ProgressEvent & { model?: ModelRecord }>('/substrate/v1/models/import', req, {
        onChunk: (e) => {
          if (e.model === undefined) onProgress?.(e)
        },
        signal: call.signal,
      })
      if (last.model === undefined)
        throw new SubstrateError('E_INTERNAL', 'the daemon did not say which model it imported')
      return last.model
    },
    stopModel: (name: string, call?: Call) =>
      json<{ status: string }>('POST', '/substrate/v1/models/stop', { model: name }, call),
    shutdown: (call?: Call) => json<{ status: string }>('POST', '/substrate/v1/shutdown', {}, call),
  }
}

export type Client = ReturnType<typeof createClient>
