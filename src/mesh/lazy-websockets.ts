// libp2p's WebSockets transport, loaded when it is first needed. @libp2p/websockets imports
// node:http as an ES module, and Node fills an ES module's view of a built-in by reading
// every one of its exports, node:http's lazy `WebSocket` getter included: that loads undici,
// http2, zlib, perf_hooks and worker_threads, ~3.5 MiB resident in every idle daemon
// (BENCHMARKS.md "Daemon footprint") though most never meet a /ws address. So this transport
// answers libp2p's address filters itself and imports the real one on the first /ws dial;
// a node that listens on /ws calls load() before it starts, since listening is synchronous.

import {
  type CreateListenerOptions,
  type DialTransportOptions,
  type Listener,
  serviceCapabilities,
  type Transport,
  transportSymbol,
} from '@libp2p/interface'
import type { WebSocketsInit, webSockets } from '@libp2p/websockets'
import type { Multiaddr } from '@multiformats/multiaddr'
import { WebSockets, WebSocketsSecure } from '@multiformats/multiaddr-matcher'
import { SubstrateError } from '../errors.ts'

type WebSocketsComponents = Parameters<ReturnType<typeof webSockets>>[0]

/** The addresses the WebSockets transport serves: /ws and /wss, exactly as it filters them. */
export function isWebSocketsAddress(ma: Multiaddr): boolean {
  return WebSockets.exactMatch(ma) || WebSocketsSecure.exactMatch(ma)
}

export interface LazyWebSockets {
  /** the factory libp2p's `transports` takes */
  transport: (components: WebSocketsComponents) => Transport
  /** imports and builds the real transport (once); needed before listening on /ws */
  load(): Promise<void>
}

export function lazyWebSockets(init: WebSocketsInit = {}): LazyWebSockets {
  let components: WebSocketsComponents | undefined
  let real: Transport | undefined
  let loading: Promise<Transport> | undefined
  const load = (): Promise<Transport> => {
    loading ??= import('@libp2p/websockets').then(({ webSockets }) => {
      if (components === undefined)
        throw new Error('lazyWebSockets: load() before libp2p built the transport')
      real = webSockets(init)(components)
      return real
    })
    return loading
  }
  const filter = (multiaddrs: Multiaddr[]) => multiaddrs.filter(isWebSocketsAddress)

  return {
    transport: (given) => {
      components = given
      return {
        [transportSymbol]: true,
        [Symbol.toStringTag]: '@libp2p/websockets',
        [serviceCapabilities]: ['@libp2p/transport'],
        async dial(ma: Multiaddr, options: DialTransportOptions) {
          return (await load()).dial(ma, options)
        },
        createListener(options: CreateListenerOptions): Listener {
          if (real === undefined) {
            throw new SubstrateError(
              'E_INTERNAL',
              'the WebSockets transport was asked to listen before it was loaded',
              { hint: 'createMeshNode loads it when a listen address is /ws or /wss' },
            )
          }
          return real.createListener(options)
        },
        listenFilter: filter,
        dialFilter: filter,
      }
    },
    load: async () => {
      await load()
    },
  }
}
