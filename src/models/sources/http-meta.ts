// Small metadata requests of the pull sources (a file listing, a manifest, a HEAD), with
// one timeout and one way of saying which source failed. Model bytes never come through
// here: they go through the resumable downloader.

import { SubstrateError } from '../../errors.ts'

export interface MetaRequest {
  /** who is asked, for errors: "Hugging Face (https://huggingface.co)" */
  who: string
  headers?: Record<string, string>
  signal?: AbortSignal
  method?: 'GET' | 'HEAD'
  /** 'manual' returns a redirect instead of following it */
  redirect?: 'follow' | 'manual'
  timeoutMs?: number
}

/** Sends the request; a network failure or timeout is E_DOWNLOAD_FAILED naming the source. */
export async function metaRequest(url: string, req: MetaRequest): Promise<Response> {
  const timeout = AbortSignal.timeout(req.timeoutMs ?? 30_000)
  const signal = req.signal === undefined ? timeout : AbortSignal.any([req.signal, timeout])
  try {
    return await fetch(url, {
      method: req.method ?? 'GET',
      headers: { 'user-agent': 'substrate', ...req.headers },
      redirect: req.redirect ?? 'follow',
      signal,
    })
  } catch (err) {
    if (req.signal?.aborted)
      throw new SubstrateError('E_CANCELLED', `request to ${url} cancelled`, { cause: err })
    const why =
      err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err)
    throw new SubstrateError('E_DOWNLOAD_FAILED', `cannot reach ${req.who} at ${url}: ${why}`, {
      hint: 'check the network and the endpoint setting, then try again',
      cause: err,
    })
  }
}

/** Reads at most `limit` bytes of a body as text; a larger body is E_PROTOCOL. */
export async function readText(res: Response, what: string, limit = 4 << 20): Promise<string> {
  const declared = Number(res.headers.get('content-length') ?? Number.NaN)
  if (declared > limit) {
    await res.body?.cancel()
    throw new SubstrateError('E_PROTOCOL', `${what} is ${declared} bytes, more than the ${limit} accepted`)
  }
  const buf = Buffer.from(await res.arrayBuffer())
  if (buf.length > limit) {
    throw new SubstrateError('E_PROTOCOL', `${what} is more than the ${limit} bytes accepted`)
  }
  return buf.toString('utf8')
}

export async function readJson(res: Response, what: string): Promise<unknown> {
  const text = await readText(res, what)
  try {
    return JSON.parse(text)
  } catch {
    throw new SubstrateError('E_PROTOCOL', `${what} is not JSON: ${JSON.stringify(text.slice(0, 80))}`)
  }
}

/** The error for an answer that is neither success nor "not found". */
export function unexpected(res: Response, url: string, who: string): SubstrateError {
  if (res.status === 401 || res.status === 403) {
    return new SubstrateError('E_UNAUTHORIZED', `${who} refused ${url} (${res.status})`, {
      hint: 'the repository may be private or gated: set a token with access to it',
    })
  }
  return new SubstrateError('E_DOWNLOAD_FAILED', `${who} answered ${res.status} ${res.statusText} for ${url}`)
}

/** "https://host/x/" → "https://host/x" */
export function trimSlash(url: string): string {
  return url.replace(/\/+$/, '')
}
