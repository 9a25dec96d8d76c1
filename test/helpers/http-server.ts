// Local HTTP servers for pull tests: each records what it was asked and answers through a
// handler, so a test can speak a protocol exactly (or break it on purpose).

import { once } from 'node:events'
import { readdirSync } from 'node:fs'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { silentLogger } from '../../src/logger.ts'
import { createModelStore, type ModelStoreInit } from '../../src/models/store.ts'
import { openDatabase } from '../../src/store/database.ts'

export interface Seen {
  method: string
  path: string
  authorization: string | undefined
  range: string | undefined
  ifRange: string | undefined
}
export type Handler = (req: IncomingMessage, res: ServerResponse, nth: number) => void

export async function serve(handler: Handler) {
  const seen: Seen[] = []
  const server = http.createServer((req, res) => {
    const ifRange = req.headers['if-range']
    seen.push({
      method: req.method ?? '',
      path: req.url ?? '',
      authorization: req.headers.authorization,
      range: req.headers.range,
      ifRange: typeof ifRange === 'string' ? ifRange : undefined,
    })
    handler(req, res, seen.length)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    seen,
    url: (path: string) => `http://127.0.0.1:${port}${path}`,
    close: () => {
      server.closeAllConnections()
      server.close()
    },
  }
}

/** Answers like a range-capable file server; `cutAt` drops the connection at that byte of the file. */
export function sendFile(
  req: IncomingMessage,
  res: ServerResponse,
  body: Buffer,
  opts: { cutAt?: number; ignoreRange?: boolean } = {},
) {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
  const start = m && !opts.ignoreRange ? Number(m[1]) : 0
  const headers = { etag: '"v1"', 'accept-ranges': 'bytes', 'content-length': String(body.length - start) }
  if (start > 0)
    res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` })
  else res.writeHead(200, headers)
  if (opts.cutAt === undefined || opts.cutAt >= body.length) {
    res.end(body.subarray(start))
    return
  }
  res.write(body.subarray(start, Math.max(start, opts.cutAt)), () => res.destroy())
}

let homes = 0
/** A model store in a fresh home under `root`, with quick retries for fault tests. */
export async function openTestStore(root: string, init: Partial<ModelStoreInit> = {}) {
  const home = join(root, `home-${++homes}`)
  const db = openDatabase(join(home, 'substrate.db'))
  const store = createModelStore(
    { db, logger: silentLogger },
    { dir: join(home, 'models'), pull: { retries: 3, backoffMs: 5, idleTimeoutMs: 2000 }, ...init },
  )
  await store.start()
  const tmp = () => readdirSync(join(home, 'models', 'tmp')).sort()
  return { store, tmp, home, close: () => store.stop().then(() => db.close()) }
}
