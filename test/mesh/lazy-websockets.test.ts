// An idle daemon loads no code it does not use: the WebSockets transport (and with it Node's
// undici, http2 and zlib, which any ES-module import of node:http pulls in) is loaded only
// when a /ws address is listened on or dialled. Each case runs in a fresh process, since
// what a process has loaded is the thing measured. Dialling and listening over /ws for
// real is test/mesh/libp2p-net.test.ts.

import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { test } from 'node:test'
import { multiaddr } from '@multiformats/multiaddr'
import { SubstrateError } from '../../src/errors.ts'
import { isWebSocketsAddress, lazyWebSockets } from '../../src/mesh/lazy-websockets.ts'

const src = (path: string) => new URL(`../../src/${path}`, import.meta.url).href

/** Starts a mesh node listening on `listen` and the API server, and says what got loaded. */
function loadedBy(listen: string[]): { undici: boolean; websockets: boolean; wsAddrs: number } {
  const script = `
import { registerHooks } from 'node:module'
const packages = new Set()
registerHooks({
  load(url, context, next) {
    const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(url)
    if (m) packages.add(m[1])
    return next(url, context)
  },
})
const { generateIdentity } = await import(${JSON.stringify(src('identity/keys.ts'))})
const { silentLogger } = await import(${JSON.stringify(src('logger.ts'))})
const { createMeshNode } = await import(${JSON.stringify(src('mesh/libp2p-node.ts'))})
const { createApiServer } = await import(${JSON.stringify(src('api/server.ts'))})
const mesh = await createMeshNode({ identity: generateIdentity(), logger: silentLogger }, {
  listen: ${JSON.stringify(listen)},
  relayClient: false,
  keepPeers: false,
})
await mesh.start()
const api = createApiServer({ logger: silentLogger, routes: [] }, { host: '127.0.0.1', port: 0 })
await api.start()
const answer = await new Promise((resolve, reject) => {
  process.getBuiltinModule('node:http').get(api.url + '/nothing', (res) => { res.resume(); resolve(res.statusCode) }).on('error', reject)
})
if (answer !== 404) throw new Error('the API server answered ' + answer)
const result = {
  undici: process.moduleLoadList.includes('NativeModule internal/deps/undici/undici'),
  websockets: packages.has('@libp2p/websockets'),
  wsAddrs: mesh.multiaddrs().filter((a) => a.includes('/ws')).length,
}
await api.stop()
await mesh.stop()
console.log(JSON.stringify(result))
process.exit(0)
`
  const res = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 120_000,
  })
  assert.equal(res.status, 0, res.stderr)
  return JSON.parse(res.stdout.trim().split('\n').at(-1)!)
}

test('a mesh node and API server that use no /ws address load neither WebSockets nor undici', () => {
  assert.deepEqual(loadedBy(['/ip4/127.0.0.1/tcp/0']), { undici: false, websockets: false, wsAddrs: 0 })
})

test('a node that listens on /ws loads the transport before it starts, and listens', () => {
  const got = loadedBy(['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'])
  assert.equal(got.websockets, true)
  assert.equal(got.wsAddrs, 1)
})

test("the lazy transport filters addresses as @libp2p/websockets does, and won't listen unloaded", () => {
  assert.equal(isWebSocketsAddress(multiaddr('/ip4/127.0.0.1/tcp/4001/ws')), true)
  assert.equal(isWebSocketsAddress(multiaddr('/ip4/127.0.0.1/tcp/4001/tls/ws')), true)
  assert.equal(isWebSocketsAddress(multiaddr('/ip4/127.0.0.1/tcp/4001/wss')), true)
  assert.equal(isWebSocketsAddress(multiaddr('/ip4/127.0.0.1/tcp/4001')), false)
  assert.equal(isWebSocketsAddress(multiaddr('/ip4/127.0.0.1/udp/4001/quic-v1')), false)
  const ws = lazyWebSockets()
  const transport = ws.transport({} as Parameters<typeof ws.transport>[0])
  const addrs = ['/ip4/1.2.3.4/tcp/1', '/ip4/1.2.3.4/tcp/2/ws', '/dns4/a.example/tcp/443/wss'].map((a) =>
    multiaddr(a),
  )
  assert.deepEqual(transport.dialFilter(addrs).map(String), [
    '/ip4/1.2.3.4/tcp/2/ws',
    '/dns4/a.example/tcp/443/wss',
  ])
  assert.deepEqual(transport.listenFilter(addrs).map(String), [
    '/ip4/1.2.3.4/tcp/2/ws',
    '/dns4/a.example/tcp/443/wss',
  ])
  assert.throws(
    () => transport.createListener({ upgrader: {} as never }),
    (err: unknown) => err instanceof SubstrateError && err.code === 'E_INTERNAL',
  )
})
