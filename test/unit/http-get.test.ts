import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import tls from 'node:tls'
import { type BodySink, type HttpResponse, httpGet } from '../../src/models/http-get.ts'

// Servers that write exact bytes, in pieces, so each framing case and each lie is spoken on purpose.
type Script = (socket: net.Socket, request: string) => Promise<void> | void
const servers: net.Server[] = []
after(() => {
  for (const server of servers) server.close()
})

async function rawServer(script: Script, secure?: { key: string; cert: string }) {
  const onSocket = (socket: net.Socket) => {
    socket.setNoDelay(true)
    socket.on('error', () => {})
    let request = ''
    socket.on('data', function onData(d: Buffer) {
      request += d.toString('latin1')
      if (!request.includes('\r\n\r\n')) return
      socket.off('data', onData)
      void Promise.resolve(script(socket, request)).catch(() => socket.destroy())
    })
  }
  const server = secure === undefined ? net.createServer(onSocket) : tls.createServer(secure, onSocket)
  servers.push(server)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as net.AddressInfo
  return `${secure === undefined ? 'http' : 'https'}://127.0.0.1:${port}`
}

/** Writes the pieces with a pause between, so the client sees them as separate reads. */
async function send(socket: net.Socket, ...pieces: (string | Buffer)[]) {
  for (const piece of pieces) {
    socket.write(piece)
    await sleep(5)
  }
}

/** A sink handing out `spaceSize` bytes at a time; `wait` makes every fill ask for a pause. */
function collector(spaceSize = 1 << 20, wait?: () => Promise<void>) {
  const parts: Buffer[] = []
  let space = Buffer.alloc(spaceSize)
  let pauses = 0
  const sink: BodySink = {
    space: () => space,
    filled(n) {
      parts.push(Buffer.from(space.subarray(0, n)))
      space = Buffer.alloc(spaceSize)
      if (wait === undefined) return undefined
      pauses++
      return wait()
    },
  }
  return { sink, body: () => Buffer.concat(parts), pauses: () => pauses }
}

const get = (url: string, timeout = 5000, signal?: AbortSignal) =>
  httpGet(new URL(url), {
    headers: { 'user-agent': 'test' },
    idleTimeoutMs: timeout,
    ...(signal === undefined ? {} : { signal }),
  })

async function bodyOf(res: HttpResponse, spaceSize?: number) {
  const c = collector(spaceSize)
  await res.readBody(c.sink)
  return c.body()
}

test('a Content-Length body arrives whole; headers are parsed; bytes past the length are ignored', async () => {
  let seen = ''
  const base = await rawServer(async (socket, request) => {
    seen = request
    await send(
      socket,
      'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nETag: "a"\r\nX-Two: 1\r\nx-two: 2\r\n\r\nhello',
      ' world',
      'EXTRA',
    )
    socket.end()
  })
  const res = await get(`${base}/some/file.gguf?rev=1`)
  assert.equal(res.status, 200)
  assert.equal(res.statusMessage, 'OK')
  assert.equal(res.headers.etag, '"a"')
  assert.equal(res.headers['x-two'], '1, 2')
  assert.equal((await bodyOf(res, 3)).toString(), 'hello world')
  assert.match(seen, /^GET \/some\/file\.gguf\?rev=1 HTTP\/1\.1\r\n/)
  assert.match(seen, /\r\nhost: 127\.0\.0\.1:\d+\r\n/)
  assert.match(seen, /\r\nuser-agent: test\r\n/)
})

test('a chunked body is decoded across reads split anywhere; extensions and trailers are skipped', async () => {
  const payload = randomBytes(300_000)
  const base = await rawServer(async (socket) => {
    const wire = Buffer.concat([
      Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'),
      Buffer.from('5;name=value\r\n'),
      payload.subarray(0, 5),
      Buffer.from('\r\n1000\r\n'),
      payload.subarray(5, 5 + 0x1000),
      Buffer.from(`\r\n${(payload.length - 5 - 0x1000).toString(16)}\r\n`),
      payload.subarray(5 + 0x1000),
      Buffer.from('\r\n0\r\nX-Trailer: yes\r\n\r\n'),
    ])
    // Cut the wire at awkward places: inside a size line, between CR and LF, inside data.
    const cuts = [40, 50, 51, 54, 60, 62, 4200, 4201, 4203, 4206, 100_000, wire.length - 3, wire.length]
    const pieces = cuts.map((cut, i) => wire.subarray(cuts[i - 1] ?? 0, cut))
    await send(socket, ...pieces)
    socket.end()
  })
  for (const spaceSize of [7, 1 << 20]) {
    const res = await get(`${base}/c`)
    assert.ok((await bodyOf(res, spaceSize)).equals(payload), `space ${spaceSize}`)
  }
})

test('a body with neither length nor chunking runs to the close; an interim 100 is skipped', async () => {
  const base = await rawServer(async (socket) => {
    await send(socket, 'HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 200 OK\r\n\r\nall of', ' it')
    socket.end()
  })
  const res = await get(`${base}/x`)
  assert.equal(res.status, 200)
  assert.equal((await bodyOf(res)).toString(), 'all of it')
})

test('a connection cut short of the declared length or inside a chunked body is an error', async () => {
  const short = await rawServer(async (socket) => {
    await send(
      socket,
      'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n',
      'only forty bytes of the hundred promised',
    )
    socket.destroy()
  })
  await assert.rejects((await get(`${short}/`)).readBody(collector().sink), /closed 60 bytes before the end/)
  const chunks = await rawServer(async (socket) => {
    await send(
      socket,
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n',
      '10\r\n0123456789abcdef\r\n',
      '8\r\nabc',
    )
    socket.end()
  })
  await assert.rejects((await get(`${chunks}/`)).readBody(collector().sink), /inside a chunked body/)
})

test('malformed answers are errors naming what was wrong', async () => {
  const answer = async (text: string) => {
    const base = await rawServer(async (socket) => {
      await send(socket, text)
      socket.end()
    })
    const res = await get(`${base}/`)
    await res.readBody(collector().sink)
  }
  await assert.rejects(answer('ICY 200 OK\r\n\r\n'), /not an HTTP\/1\.1 response/)
  await assert.rejects(answer('HTTP/1.1 200 OK\r\nno colon here\r\n\r\n'), /malformed response header/)
  await assert.rejects(
    answer('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello'),
    /invalid Content-Length/,
  )
  await assert.rejects(answer('HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n'), /invalid Content-Length/)
  await assert.rejects(
    answer('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n'),
    /malformed chunk size line "zz"/,
  )
  await assert.rejects(
    answer('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n'),
    /longer than its declared size/,
  )
  await assert.rejects(answer(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70_000)}`), /head is larger than/)
  await assert.rejects(answer(''), /closed before a response/)
  await assert.rejects(
    httpGet(new URL('http://127.0.0.1:1/'), { headers: { evil: 'a\r\nb' }, idleTimeoutMs: 1000 }),
    /line break/,
  )
})

test('a server that goes silent is cut after the idle timeout; an abort stops a read at once', async () => {
  const base = await rawServer(async (socket) => {
    await send(socket, 'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nsome')
  })
  const started = Date.now()
  await assert.rejects((await get(`${base}/`, 300)).readBody(collector().sink), /no data for 300 ms/)
  assert.ok(Date.now() - started < 4000)
  const controller = new AbortController()
  const res = await get(`${base}/`, 10_000, controller.signal)
  setTimeout(() => controller.abort(), 50)
  await assert.rejects(res.readBody(collector().sink), /aborted/)
  await assert.rejects(get(`${base}/`, 10_000, controller.signal), /aborted/)
})

test('a sink that asks to wait pauses reading, and the body still arrives whole and in order', async () => {
  const payload = randomBytes(3 << 20)
  const base = await rawServer(async (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${payload.length}\r\n\r\n`)
    socket.end(payload)
  })
  const c = collector(256 << 10, () => sleep(2))
  await (await get(`${base}/`)).readBody(c.sink)
  assert.ok(c.body().equals(payload))
  assert.ok(c.pauses() >= 12, `paused ${c.pauses()} times`)
  // A sink that fails (a full disk) fails the body with its own error.
  const failing = collector(256 << 10, () => Promise.reject(new Error('disk on fire')))
  await assert.rejects((await get(`${base}/`)).readBody(failing.sink), /disk on fire/)
})

test('an https body is read through TLS, checked against the CA like any client', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'substrate-tls-'))
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    )
    const cert = readFileSync(join(dir, 'cert.pem'), 'utf8')
    const payload = randomBytes(5 << 20)
    const base = await rawServer(
      async (socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${payload.length}\r\n\r\n`)
        socket.end(payload)
      },
      { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert },
    )
    // Unknown CA: refused.
    await assert.rejects(get(`${base}/`), /self-signed|unable to verify/)
    tls.setDefaultCACertificates([...tls.getCACertificates('default'), cert])
    const c = collector(1 << 20, () => sleep(1))
    await (await get(`${base}/model.gguf`)).readBody(c.sink)
    assert.ok(c.body().equals(payload))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a response dropped before its body closes the connection at once', async () => {
  let closed: Promise<unknown> | undefined
  const base = await rawServer(async (socket) => {
    closed = once(socket, 'close')
    await send(socket, 'HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nthe start')
  })
  const res = await get(`${base}/`)
  res.close()
  await closed
  await assert.rejects(res.readBody(collector().sink), /already read or dropped/)
})
