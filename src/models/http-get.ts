// One HTTP/1.1 GET for the model downloader, with the body read straight into the caller's
// buffers. Node's http client hands a body over as a fresh 64 KiB Buffer per socket read,
// each through its parser and a Readable stream: ~1 s of CPU per GiB on this machine, more
// than the sha256 of the same bytes. Here a plain TCP socket reads into the caller's space
// (net's `onread`), up to megabytes per read, and the work per read is counting bytes (or,
// for a chunked body, moving them over the chunk headers): ~0.2 s per GiB. TLS sockets have
// no `onread`, so an https body is copied from their chunks into the same space.
//
// It speaks only what a download needs: GET, Connection: close, a body framed by
// Content-Length, chunked transfer coding or the end of the connection. Network failures
// and malformed answers are plain Errors (the caller decides whether to retry).

import net from 'node:net'
import tls from 'node:tls'

/** Where a response body goes. */
export interface BodySink {
  /** Free space for the next body bytes; never empty. */
  space(): Uint8Array
  /**
   * `n` body bytes now fill the start of the last `space()`. A promise pauses reading until it
   * settles (a rejection fails the body); a throw fails the body at once.
   */
  filled(n: number): Promise<void> | undefined
}

export interface HttpResponse {
  status: number
  statusMessage: string
  /** Names in lower case; a repeated header's values joined with ", ". */
  headers: Record<string, string | undefined>
  /** Reads the body into the sink; rejects when the connection fails or ends before the body does. */
  readBody(sink: BodySink): Promise<void>
  /** Drops the connection: the body, if any, is not wanted. */
  close(): void
}

export interface GetOptions {
  headers: Record<string, string>
  /** A connection silent this long (while we are reading) counts as cut. */
  idleTimeoutMs: number
  signal?: AbortSignal
}

const MAX_HEAD = 64 << 10

export function httpGet(url: URL, opts: GetOptions): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const secure = url.protocol === 'https:'
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
    const port = Number(url.port || (secure ? 443 : 80))
    let request: string
    try {
      request = requestHead(url, opts.headers)
    } catch (err) {
      reject(err)
      return
    }
    let phase: 'head' | 'waiting' | 'body' | 'done' = 'head'
    let head: Buffer = Buffer.alloc(0)
    let early: Buffer | undefined // body bytes that came with the head
    let framing: Framing | undefined
    let sink: BodySink | undefined
    let lastSpace: Uint8Array | undefined
    let failure: Error | undefined
    let paused = false
    let endedWhileWaiting: { err: Error | undefined } | undefined
    let settleBody: { resolve: () => void; reject: (err: Error) => void } | undefined
    const scratch = Buffer.allocUnsafe(64 << 10)

    const onRead = (n: number, buf: Uint8Array): boolean => {
      received(buf.subarray(0, n), buf === lastSpace)
      return !paused
    }
    const socket: net.Socket = secure
      ? tls.connect({
          host,
          port,
          ALPNProtocols: ['http/1.1'],
          ...(net.isIP(host) === 0 ? { servername: host } : {}),
        })
      : net.connect({
          host,
          port,
          onread: {
            buffer: () => {
              lastSpace = phase === 'body' && sink !== undefined ? sink.space() : undefined
              return lastSpace ?? scratch
            },
            callback: onRead,
          },
        })
    if (secure) socket.on('data', (chunk: Buffer) => received(chunk, false))
    socket.setTimeout(opts.idleTimeoutMs, () =>
      socket.destroy(new Error(`no data for ${opts.idleTimeoutMs} ms`)),
    )
    const onAbort = () => socket.destroy(new Error('aborted'))
    if (opts.signal?.aborted) onAbort()
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    socket.write(request)

    const finish = (err?: Error) => {
      if (phase === 'done') return
      const was = phase
      phase = 'done'
      opts.signal?.removeEventListener('abort', onAbort)
      socket.destroy()
      if (was === 'head') {
        reject(err ?? new Error('the connection closed before a response'))
      } else if (settleBody === undefined) {
        failure = err // readBody, when called, reports it
      } else if (err === undefined) {
        settleBody.resolve()
      } else {
        settleBody.reject(err)
      }
    }
    socket.on('error', (err) => ended(err))
    socket.on('close', () => ended(undefined))
    function ended(err: Error | undefined) {
      // Before readBody the bytes that came with the head may be the whole body: judged then.
      if (phase === 'waiting') endedWhileWaiting ??= { err }
      else if (err !== undefined) finish(err)
      else if (phase === 'body' && framing?.untilClose) finish()
      else finish(new Error(phase === 'head' ? 'the connection closed before a response' : closedEarly()))
    }
    const closedEarly = () =>
      framing?.length === undefined
        ? 'the connection closed inside a chunked body'
        : `the connection closed ${framing.length} bytes before the end of the body`

    const pause = (until: Promise<void>) => {
      paused = true
      socket.setTimeout(0)
      if (secure) socket.pause()
      until.then(
        () => {
          paused = false
          if (phase !== 'body') return
          socket.setTimeout(opts.idleTimeoutMs)
          socket.resume()
        },
        (err: Error) => finish(err),
      )
    }

    function received(data: Uint8Array, direct: boolean) {
      if (phase === 'head') {
        head = Buffer.concat([head, data])
        readHead()
      } else if (phase === 'waiting') {
        early = Buffer.concat([early ?? Buffer.alloc(0), data])
      } else if (phase === 'body') {
        deliver(data, direct)
      }
    }

    function readHead() {
      for (;;) {
        const end = head.indexOf('\r\n\r\n')
        if (end === -1) {
          if (head.length > MAX_HEAD) finish(new Error(`the response head is larger than ${MAX_HEAD} bytes`))
          return
        }
        let parsed: ReturnType<typeof parseHead>
        try {
          parsed = parseHead(head.subarray(0, end).toString('latin1'))
          head = head.subarray(end + 4)
          if (parsed.status >= 100 && parsed.status < 200) continue // interim (100 Continue): the real one follows
          framing = framingOf(parsed.status, parsed.headers)
        } catch (err) {
          finish(err as Error)
          return
        }
        phase = 'waiting'
        paused = true
        socket.setTimeout(0)
        if (secure) socket.pause()
        if (head.length > 0) early = head
        head = Buffer.alloc(0)
        resolve({ ...parsed, readBody, close: () => finish() })
        return
      }
    }

    function readBody(into: BodySink): Promise<void> {
      return new Promise((resolveBody, rejectBody) => {
        if (phase !== 'waiting') {
          rejectBody(failure ?? new Error('the response body was already read or dropped'))
          return
        }
        settleBody = { resolve: resolveBody, reject: rejectBody }
        sink = into
        phase = 'body'
        paused = false
        if (framing?.length === 0) {
          finish()
          return
        }
        if (early !== undefined) {
          const bytes = early
          early = undefined
          deliver(bytes, false)
        }
        if (phase === 'body' && endedWhileWaiting !== undefined) ended(endedWhileWaiting.err)
        if (phase === 'body' && !paused) {
          socket.setTimeout(opts.idleTimeoutMs)
          socket.resume()
        }
      })
    }

    /** Hands body bytes to the sink: in place when they were read into its space, else copied. */
    function deliver(data: Uint8Array, direct: boolean) {
      const into = sink as BodySink
      const waits: Promise<void>[] = []
      const filled = (n: number) => {
        const wait = into.filled(n)
        if (wait !== undefined) waits.push(wait)
      }
      let out = 0
      try {
        const done = (framing as Framing).take(data, (start, end) => {
          if (direct) {
            if (start !== out) data.copyWithin(out, start, end)
            out += end - start
            return
          }
          for (let at = start; at < end; ) {
            const space = into.space()
            const n = Math.min(space.length, end - at)
            space.set(data.subarray(at, at + n))
            at += n
            filled(n)
          }
        })
        if (direct && out > 0) filled(out)
        if (done) finish()
      } catch (err) {
        finish(err as Error)
      }
      const wait = waits.length === 0 ? undefined : waits.length === 1 ? waits[0] : Promise.all(waits)
      if (wait === undefined) return
      // Once the body is over a failed write surfaces where the caller drains its sink.
      if (phase === 'done') wait.catch(() => {})
      else pause(wait.then(() => {}))
    }
  })
}

function requestHead(url: URL, headers: Record<string, string>): string {
  let text = `GET ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`
  for (const [name, value] of Object.entries(headers)) {
    if (/[\r\n]/.test(name + value)) throw new Error(`header ${name} has a line break`)
    text += `${name}: ${value}\r\n`
  }
  return `${text}connection: close\r\n\r\n`
}

function parseHead(text: string) {
  const [statusLine = '', ...lines] = text.split('\r\n')
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine)
  if (m === null) throw new Error(`not an HTTP/1.1 response: ${JSON.stringify(statusLine.slice(0, 80))}`)
  const headers: Record<string, string | undefined> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    if (colon <= 0 || line[0] === ' ' || line[0] === '\t')
      throw new Error(`malformed response header line: ${JSON.stringify(line.slice(0, 80))}`)
    const name = line.slice(0, colon).trim().toLowerCase()
    const value = line.slice(colon + 1).trim()
    const seen = headers[name]
    headers[name] = seen === undefined ? value : `${seen}, ${value}`
  }
  return { status: Number(m[1]), statusMessage: m[2] ?? '', headers }
}

/** How a response body ends: after `length` bytes, after a zero-size chunk, or at the close. */
interface Framing {
  /** Body bytes still expected when the length is declared. */
  length: number | undefined
  untilClose: boolean
  /** Passes the body's byte ranges of `data` to `emit`; true once the body is complete. */
  take(data: Uint8Array, emit: (start: number, end: number) => void): boolean
}

function framingOf(status: number, headers: Record<string, string | undefined>): Framing {
  const coding = headers['transfer-encoding']
  if (coding !== undefined) {
    // A response with a transfer coding other than a final chunked runs to the close (RFC 9112 6.3).
    return /(?:^|,)\s*chunked\s*$/i.test(coding) ? chunked() : counted(undefined)
  }
  if (status === 204 || status === 304) return counted(0)
  const declared = headers['content-length']
  if (declared === undefined) return counted(undefined)
  const values = new Set(declared.split(',').map((v) => v.trim()))
  const [only] = values
  if (values.size !== 1 || only === undefined || !/^\d{1,15}$/.test(only))
    throw new Error(`invalid Content-Length ${JSON.stringify(declared)}`)
  return counted(Number(only))
}

function counted(length: number | undefined): Framing {
  const framing: Framing = {
    length,
    untilClose: length === undefined,
    take(data, emit) {
      if (framing.length === undefined) {
        emit(0, data.length)
        return false
      }
      // Bytes past the declared length are not the body: a server that sends more is ignored.
      const n = Math.min(data.length, framing.length)
      if (n > 0) emit(0, n)
      framing.length -= n
      return framing.length === 0
    },
  }
  return framing
}

/** Chunked transfer coding (RFC 9112 7.1): hex size line, data, CRLF, …, 0, trailers, CRLF. */
function chunked(): Framing {
  let state: 'size' | 'data' | 'crlf' | 'trailer' = 'size'
  let line = ''
  let left = 0
  return {
    length: undefined,
    untilClose: false,
    take(data, emit) {
      let i = 0
      while (i < data.length) {
        if (state === 'data') {
          const n = Math.min(left, data.length - i)
          emit(i, i + n)
          i += n
          left -= n
          if (left === 0) state = 'crlf'
          continue
        }
        const byte = data[i++] as number
        if (byte !== 0x0a) {
          line += String.fromCharCode(byte)
          if (line.length > 4096) throw new Error('a chunk size line is longer than 4096 bytes')
          continue
        }
        const text = line.replace(/\r$/, '')
        line = ''
        if (state === 'crlf') {
          if (text !== '') throw new Error('a chunk is longer than its declared size')
          state = 'size'
        } else if (state === 'size') {
          const size = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(text)?.[1]
          if (size === undefined)
            throw new Error(`malformed chunk size line ${JSON.stringify(text.slice(0, 80))}`)
          left = Number.parseInt(size, 16)
          state = left === 0 ? 'trailer' : 'data'
        } else if (text === '') {
          return true // the empty line after the trailers ends the body
        }
      }
      return false
    },
  }
}
