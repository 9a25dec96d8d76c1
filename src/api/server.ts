// The daemon's HTTP server: Ollama-compatible, OpenAI-compatible and native routes on one
// port. Loopback by default; with a token configured, every request must carry it.

import { timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { SubstrateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import { sendError, sendJson } from './http.ts'
import { matchRoute, type Route } from './router.ts'

// Not `import … from 'node:http'`: Node builds an ES module's view of a built-in by reading
// all its exports, and node:http's lazy `WebSocket` getter then loads undici, http2, zlib and
// more (~3.5 MiB resident in every idle daemon, BENCHMARKS.md "Daemon footprint").
// getBuiltinModule hands over the module itself, whose getters run only when used.
const { createServer } = process.getBuiltinModule('node:http')

export interface ApiServerInit {
  host: string
  port: number
  token?: string | undefined
}

export interface ApiServer {
  start(): Promise<void>
  stop(): Promise<void>
  /** the bound address, e.g. "http://127.0.0.1:11435" (valid after start) */
  readonly url: string
  readonly port: number
}

function authorized(req: IncomingMessage, token: string): boolean {
  const header = req.headers.authorization ?? ''
  const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : '')
  const expected = Buffer.from(token)
  return given.length === expected.length && timingSafeEqual(given, expected)
}

export function createApiServer(
  components: { logger: Logger; routes: Route[] },
  init: ApiServerInit,
): ApiServer {
  const log = components.logger.child('api')
  const { routes } = components
  let server: Server | undefined
  let port = init.port

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const style = url.pathname.startsWith('/v1/') ? 'openai' : 'ollama'
    try {
      if (init.token !== undefined && !authorized(req, init.token)) {
        throw new SubstrateError('E_UNAUTHORIZED', 'missing or wrong bearer token', {
          hint: 'send Authorization: Bearer <token> (SUBSTRATE_TOKEN on the CLI)',
        })
      }
      if (url.pathname === '/' && (req.method === 'GET' || req.method === 'HEAD')) {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('Substrate is running')
        return
      }
      const route = matchRoute(routes, req.method ?? 'GET', url.pathname)
      if (route === 'method') {
        sendJson(res, 405, {
          error: `${req.method} is not allowed on ${url.pathname}`,
          code: 'E_BAD_REQUEST',
        })
        return
      }
      if (!route) throw new SubstrateError('E_NOT_FOUND', `no route ${req.method} ${url.pathname}`)
      await route.handler(req, res, url)
    } catch (err) {
      if (err instanceof SubstrateError && err.code === 'E_CANCELLED') {
        log.debug('client went away', { path: url.pathname })
        res.destroy()
        return
      }
      if (!(err instanceof SubstrateError) || err.status >= 500) {
        log.error('request failed', {
          path: url.pathname,
          error: err instanceof Error ? err.message : String(err),
        })
      }
      sendError(res, err, style)
    }
  }

  return {
    get url() {
      const host = init.host.includes(':') ? `[${init.host}]` : init.host
      return `http://${host}:${port}`
    },
    get port() {
      return port
    },
    async start() {
      server = createServer((req, res) => void handle(req, res))
      server.keepAliveTimeout = 5000
      await new Promise<void>((resolve, reject) => {
        server!.once('error', (err: NodeJS.ErrnoException) => {
          reject(
            err.code === 'EADDRINUSE'
              ? new SubstrateError('E_ALREADY_RUNNING', `${init.host}:${init.port} is already in use`, {
                  hint: 'another daemon may be running; set SUBSTRATE_PORT or --port to use another port',
                })
              : err,
          )
        })
        server!.listen(init.port, init.host, () => resolve())
      })
      port = (server.address() as AddressInfo).port
      log.info('listening', { url: this.url })
    },
    async stop() {
      if (!server) return
      const s = server
      server = undefined
      await new Promise<void>((resolve) => {
        s.close(() => resolve())
        s.closeAllConnections()
      })
    },
  }
}
