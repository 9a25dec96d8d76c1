// Downloads a model over HTTP(S) into the store's tmp directory, resumably. The partial
// file is named after the URL's hash and has an info file beside it (total size, ETag),
// so an interrupted pull (network cut, daemon restart) continues with a Range request
// instead of starting over. The body is read straight into a few 4 MiB buffers
// (http-get.ts), each hashed in order and written with direct I/O while the next fills
// (body-writer.ts, writable.ts): memory stays bounded, and a GiB costs about the CPU of
// curl saving it (BENCHMARKS.md, "HTTP pull vs curl").

import { createHash, type Hash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readFile, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { SubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import { createBodyWriter, local } from './body-writer.ts'
import { type HttpResponse, httpGet } from './http-get.ts'
import type { BlobFetcher, HttpFetch } from './sources/plan.ts'
import type { ProgressEvent, ProgressListener } from './types.ts'
import { type OpenWritable, openWritableFile, type WritableFile } from './writable.ts'

export { type OpenWritable, openWritableFile, type WritableFile } from './writable.ts'

/** Emits progress at most every 100 ms or 0.5 %, never letting `completed` go backwards. */
export function progressReporter(listener: ProgressListener | undefined, status: string, digest?: string) {
  let reported = -1
  let at = 0
  return (completed: number, total: number | undefined, force = false) => {
    if (listener === undefined || completed < reported || (completed === reported && !force)) return
    const now = Date.now()
    const step = total === undefined ? Number.POSITIVE_INFINITY : total / 200
    if (!force && completed !== total && now - at < 100 && completed - reported < step) return
    reported = completed
    at = now
    const event: ProgressEvent = { status, completed }
    if (total !== undefined) event.total = total
    if (digest !== undefined) event.digest = digest
    listener(event)
  }
}

export interface DownloadInit {
  tmpDir: string
  logger: Logger
  openWritable?: OpenWritable
  /** Attempts after the first one for transient failures (network errors, 5xx). */
  retries?: number
  backoffMs?: number
  /** A connection silent this long counts as cut. */
  idleTimeoutMs?: number
  maxRedirects?: number
}

export interface DownloadOptions {
  /** Expected sha256 as 64 hex digits. */
  sha256?: string
  onProgress?: ProgressListener
  /** the progress status to report under; "downloading" unless given */
  status?: string
  signal?: AbortSignal
  /** Sent to the URL's own origin only: a redirect to another host does not get them. */
  headers?: Record<string, string>
  /** Sees the size before any byte is written; throws to refuse, or returns a byte cap. */
  admit?: (size: number | undefined) => number | undefined
}

export interface DownloadedFile {
  path: string
  infoPath: string
  sha256: string
  size: number
}

interface PartialInfo {
  url: string
  total?: number
  validator?: string
}

/** The URL's file name without ".gguf": the default model name. */
export function fileNameFromUrl(url: string): string {
  const last = new URL(url).pathname.split('/').pop() ?? ''
  let decoded = last
  try {
    decoded = decodeURIComponent(last)
  } catch {}
  return decoded.replace(/\.gguf$/i, '')
}

export function partialPaths(tmpDir: string, url: string): { path: string; infoPath: string } {
  const key = createHash('sha256').update(url).digest('hex')
  return { path: join(tmpDir, `download-${key}.partial`), infoPath: join(tmpDir, `download-${key}.json`) }
}

// Two pulls of one URL would write the same partial file: the second waits for the first.
const inFlight = new Map<string, Promise<unknown>>()

export async function downloadFile(
  url: string,
  init: DownloadInit,
  opts: DownloadOptions,
): Promise<DownloadedFile> {
  const { path } = partialPaths(init.tmpDir, url)
  const previous = inFlight.get(path) ?? Promise.resolve()
  const run = previous.catch(() => {}).then(() => download(url, init, opts))
  inFlight.set(path, run)
  try {
    return await run
  } finally {
    if (inFlight.get(path) === run) inFlight.delete(path)
  }
}

class Transient extends Error {}

async function download(url: string, init: DownloadInit, opts: DownloadOptions): Promise<DownloadedFile> {
  const { path, infoPath } = partialPaths(init.tmpDir, url)
  const retries = init.retries ?? 4
  const digest = opts.sha256 === undefined ? undefined : `sha256:${opts.sha256}`
  const report = progressReporter(opts.onProgress, opts.status ?? 'downloading', digest)
  let info = await readInfo(infoPath, url)
  let have = info === undefined ? 0 : await fileSize(path)
  if (info === undefined) info = { url }
  // The hash covers bytes [0, have): a resumed partial is read once to catch up.
  let hash = await hashPrefix(path, have)
  const restart = async () => {
    have = 0
    hash = createHash('sha256')
    info = { url }
    await rm(path, { force: true })
  }
  const openPartial = () =>
    local(have === 0 ? (init.openWritable ?? openWritableFile)(path, 'w') : openAt(path, have, init))
  // Retries count failures in a row without progress: a flaky link that still advances
  // keeps going, a server that keeps cutting at the same byte gives up.
  let failures = 0
  let furthest = have
  for (;;) {
    let out: WritableFile | undefined
    let res: HttpResponse | undefined
    try {
      // The file is open before the request: nothing awaits between the response and
      // reading its body, so bytes that arrive just before a cut are still kept.
      out = await openPartial()
      res = await request(url, have, info, init, opts)
      if (res.status === 416) {
        if (have > 0 && have === info.total) break // the previous attempt had already got it all
        await restart()
        throw new Transient(`${url} answered 416 Range Not Satisfiable for bytes=${have}-`)
      }
      if (res.status === 206 && !rangeMatches(res, have, info.total)) {
        await restart()
        throw new Transient('server answered a range that does not continue the partial file')
      }
      if (res.status === 200 && have > 0) {
        init.logger.info('server ignored the range request: downloading from the start', { url })
        await out.close()
        await restart()
        out = await openPartial()
      }
      const total = totalOf(res, have)
      const cap = opts.admit?.(total) ?? Number.POSITIVE_INFINITY
      info = { url, ...(total === undefined ? {} : { total }), ...validatorOf(res) }
      const saved = local(writeFile(infoPath, JSON.stringify(info)))
      saved.catch(() => {}) // awaited below; this only keeps an early failure from going unhandled
      report(have, total, true)
      const writer = createBodyWriter(out, have, { update: (data) => void hash.update(data) })
      try {
        await res.readBody({
          space: () => writer.space(),
          filled: (n) => {
            if (have + n > cap) {
              throw new SubstrateError(
                'E_QUOTA_EXCEEDED',
                `${url} is larger than the ${cap} bytes the model store quota has left`,
                { hint: 'remove models (substrate rm) or raise models.quota' },
              )
            }
            have += n
            report(have, total)
            return writer.filled(n)
          },
        })
      } finally {
        // Every byte counted in `have` (and hashed) is on its way to disk before a retry or a
        // resume relies on it; a failed write surfaces here, typed.
        await writer.drain()
      }
      await saved
      if (total !== undefined && have !== total) {
        throw new Transient(`the connection closed after ${have} of ${total} bytes`)
      }
      break
    } catch (err) {
      if (have > furthest) {
        furthest = have
        failures = 0
      }
      const failure = classify(err, url, have, ++failures > retries, opts.signal)
      if (failure !== undefined) {
        // A partial is worth keeping when it holds bytes and the network (or the user) cut it;
        // after a full disk or a refusal from the server it is only in the way.
        if (have === 0 || err instanceof SubstrateError) {
          await Promise.all([rm(path, { force: true }), rm(infoPath, { force: true })])
        }
        throw failure
      }
      const why = err instanceof Error ? err.message : String(err)
      const delay = (init.backoffMs ?? 500) * 2 ** (failures - 1)
      init.logger.warn('download interrupted, retrying', {
        url,
        attempt: failures,
        delayMs: delay,
        error: why,
      })
      await sleep(delay, undefined, { signal: opts.signal }).catch(() => {})
    } finally {
      res?.close() // whatever ended this attempt (a refusal at the headers too) drops its connection
      await out?.sync().catch(() => {})
      await out?.close().catch(() => {})
    }
  }
  const sha256 = hash.digest('hex')
  if (opts.sha256 !== undefined && sha256 !== opts.sha256) {
    await Promise.all([rm(path, { force: true }), rm(infoPath, { force: true })])
    throw new SubstrateError(
      'E_CHECKSUM_MISMATCH',
      `${url} has sha256 ${sha256}, expected ${opts.sha256}: the download was discarded`,
    )
  }
  return { path, infoPath, sha256, size: have }
}

/** The error to give up with, or undefined when the failure is worth another attempt. */
function classify(
  err: unknown,
  url: string,
  have: number,
  lastAttempt: boolean,
  signal: AbortSignal | undefined,
): SubstrateError | undefined {
  if (signal?.aborted)
    return new SubstrateError('E_CANCELLED', `download of ${url} cancelled`, { cause: err })
  if (err instanceof SubstrateError) return err
  if (!lastAttempt) return undefined
  const why = err instanceof Error ? err.message : String(err)
  if (have === 0) {
    return new SubstrateError('E_DOWNLOAD_FAILED', `download of ${url} failed: ${why}`, {
      hint: 'check the URL and the network, then try again',
      cause: err,
    })
  }
  return new SubstrateError(
    'E_DOWNLOAD_FAILED',
    `download of ${url} stopped at byte ${have}: ${why}; the partial download is kept and can be resumed`,
    { hint: 'run the same pull again to resume where it stopped', cause: err },
  )
}

async function openAt(path: string, have: number, init: DownloadInit): Promise<WritableFile> {
  await truncate(path, have) // a torn last write must not survive past the resume point
  return (init.openWritable ?? openWritableFile)(path, 'r+')
}

async function readInfo(infoPath: string, url: string): Promise<PartialInfo | undefined> {
  try {
    const info = JSON.parse(await readFile(infoPath, 'utf8')) as Partial<PartialInfo>
    if (info.url !== url) return undefined
    return {
      url,
      ...(typeof info.total === 'number' ? { total: info.total } : {}),
      ...(typeof info.validator === 'string' ? { validator: info.validator } : {}),
    }
  } catch {
    return undefined
  }
}

async function fileSize(path: string): Promise<number> {
  return stat(path).then(
    (s) => s.size,
    () => 0,
  )
}

async function hashPrefix(path: string, length: number): Promise<Hash> {
  const hash = createHash('sha256')
  if (length === 0) return hash
  for await (const chunk of createReadStream(path, { start: 0, end: length - 1 }))
    hash.update(chunk as Buffer)
  return hash
}

function rangeMatches(res: HttpResponse, have: number, knownTotal: number | undefined): boolean {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers['content-range'] ?? '')
  if (m === null || Number(m[1]) !== have) return false
  return m[3] === '*' || knownTotal === undefined || Number(m[3]) === knownTotal
}

function totalOf(res: HttpResponse, have: number): number | undefined {
  if (res.status === 206) {
    const full = /\/(\d+)$/.exec(res.headers['content-range'] ?? '')?.[1]
    if (full !== undefined) return Number(full)
  }
  const length = res.headers['content-length']
  return length === undefined ? undefined : (res.status === 206 ? have : 0) + Number(length)
}

function validatorOf(res: HttpResponse): { validator?: string } {
  const etag = res.headers.etag
  // Only a strong ETag may guard a range (RFC 9110 If-Range); else fall back to the date.
  if (etag !== undefined && !etag.startsWith('W/')) return { validator: etag }
  const modified = res.headers['last-modified']
  return modified === undefined ? {} : { validator: modified }
}

/** One GET, following redirects; resolves with a 200, 206 or 416 response, throws otherwise. */
async function request(
  url: string,
  have: number,
  info: PartialInfo,
  init: DownloadInit,
  opts: Pick<DownloadOptions, 'signal' | 'headers'>,
): Promise<HttpResponse> {
  const base: Record<string, string> = { 'user-agent': 'substrate', 'accept-encoding': 'identity' }
  if (have > 0) {
    base.range = `bytes=${have}-`
    if (info.validator !== undefined) base['if-range'] = info.validator
  }
  let target = new URL(url)
  const origin = target.origin
  for (let hop = 0; hop <= (init.maxRedirects ?? 5); hop++) {
    if (target.protocol !== 'http:' && target.protocol !== 'https:') {
      throw new SubstrateError(
        'E_DOWNLOAD_FAILED',
        `cannot download ${target.href}: only http and https are supported`,
      )
    }
    // Credentials stay with the host they were meant for (a CDN behind a redirect gets none).
    const headers = target.origin === origin ? { ...opts.headers, ...base } : base
    const res = await httpGet(target, {
      headers,
      idleTimeoutMs: init.idleTimeoutMs ?? 30_000,
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    })
    const status = res.status
    if (status === 200 || status === 206 || status === 416) return res
    res.close()
    const location = res.headers.location
    if (status >= 300 && status < 400 && location !== undefined) {
      target = new URL(location, target)
      continue
    }
    const line = `GET ${target.href} answered ${status} ${res.statusMessage}`.trim()
    if (status >= 500 || status === 408 || status === 429) throw new Transient(line)
    throw new SubstrateError('E_DOWNLOAD_FAILED', line, { hint: 'check the URL' })
  }
  throw new SubstrateError('E_DOWNLOAD_FAILED', `${url} redirected more than ${init.maxRedirects ?? 5} times`)
}

/** The fetcher for `{ kind: 'http' }` plans: a resumable download into the store's tmp/. */
export function createHttpFetcher(
  init: Pick<DownloadInit, 'retries' | 'backoffMs' | 'idleTimeoutMs' | 'maxRedirects'> = {},
): BlobFetcher {
  return async (blob, ctx) => {
    const fetch = blob.fetch as HttpFetch
    const file = await downloadFile(
      fetch.url,
      { ...init, tmpDir: ctx.tmpDir, logger: ctx.logger, openWritable: ctx.openWritable },
      {
        status: ctx.status,
        admit: ctx.admit,
        ...(blob.sha256 === undefined ? {} : { sha256: blob.sha256 }),
        ...(fetch.headers === undefined ? {} : { headers: fetch.headers }),
        ...(ctx.onProgress === undefined ? {} : { onProgress: ctx.onProgress }),
        ...(ctx.signal === undefined ? {} : { signal: ctx.signal }),
      },
    )
    return { ...file, settle: () => rm(file.infoPath, { force: true }) }
  }
}
