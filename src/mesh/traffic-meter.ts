// What the mesh costs on the wire, and which protocol spends it. libp2p hands every connection
// and every negotiated protocol stream to its `metrics` component; this one counts bytes:
//   wire       every byte on every connection's socket (TCP or WebSockets), so Noise, Yamux
//              and protocol negotiation included: what the network really carries;
//   protocols  each protocol's own payload bytes (in and out), e.g. `/meshsub/1.2.0` (gossipsub),
//              `/substrate/kad/1.0.0`, `/ipfs/id/1.0.0`, `/ipfs/ping/1.0.0`;
//   gossip     what gossipsub sends, split by part: the messages of each topic, IHAVE, IWANT,
//              GRAFT, PRUNE, IDONTWANT and subscription changes (outgoing RPCs are decoded once
//              more here; gossip is a few KB/s, so the cost is small);
//   dht        the Kad-DHT requests this node sent, by message type (FIND_NODE, GET_PROVIDERS,
//              ADD_PROVIDER, PING…): one per stream it opened, so they say what opens them.
// libp2p's other metric registrations (the connection manager's, the DHT's…) are accepted and
// dropped: nothing else is kept. `substrate peers --json` shows it under `gossip.traffic`.

import { RPC } from '@libp2p/gossipsub/message'
import type { Metrics, MultiaddrConnection, Stream } from '@libp2p/interface'

export interface TrafficCounters {
  in: number
  out: number
}

export interface TrafficSnapshot {
  /** Unix ms of the snapshot: two of them give rates. */
  at: number
  /** Every byte on the connections' sockets. */
  wire: TrafficCounters
  /** Payload bytes per protocol, and how many streams of it were opened (either side). */
  protocols: Record<string, TrafficCounters & { streams: number }>
  /** Bytes of the RPCs gossipsub sent, by part: `topic:<name>`, `ihave`, `iwant`, … */
  gossipSent: Record<string, number>
  /** Kad-DHT requests sent (streams this node opened), by message type. */
  dhtRequests: Record<string, number>
}

export interface TrafficMeter {
  /** For libp2p's `metrics` option. */
  metrics(): Metrics
  snapshot(): TrafficSnapshot
}

type Chunk = Parameters<Stream['send']>[0]

/** Any registration libp2p makes: every property is a function that does nothing. */
const ignored: unknown = new Proxy(() => ignored, { get: () => () => () => undefined })

const GOSSIPSUB = '/meshsub/'
const KAD = '/kad/'
/** Kad-DHT's message types by their protobuf value (field 1; 0 is not written). */
const KAD_TYPES = ['PUT_VALUE', 'GET_VALUE', 'ADD_PROVIDER', 'GET_PROVIDERS', 'FIND_NODE', 'PING']

/** The type of the Kad-DHT message that starts `frame` (a length-prefixed protobuf). */
function kadTypeOf(frame: Uint8Array): string {
  const body = payloadOf(frame)
  if (body.length === 0) return 'empty'
  if (body[0] !== 0x08) return KAD_TYPES[0]!
  return KAD_TYPES[body[1] ?? -1] ?? 'unknown'
}

/** Skips the unsigned varint length prefix of one length-prefixed frame. */
function payloadOf(frame: Uint8Array): Uint8Array {
  let i = 0
  while (i < frame.length && (frame[i]! & 0x80) !== 0) i++
  return frame.subarray(i + 1)
}

export function createTrafficMeter(): TrafficMeter {
  const wire: TrafficCounters = { in: 0, out: 0 }
  const protocols = new Map<string, TrafficCounters & { streams: number }>()
  const gossipSent = new Map<string, number>()
  const dhtRequests = new Map<string, number>()
  const addGossip = (part: string, bytes: number) => gossipSent.set(part, (gossipSent.get(part) ?? 0) + bytes)

  /** One outgoing gossipsub frame (one length-prefixed RPC) charged to its parts. */
  const chargeRpc = (frame: Uint8Array) => {
    let rpc: RPC
    try {
      rpc = RPC.decode(payloadOf(frame))
    } catch {
      addGossip('undecoded', frame.byteLength)
      return
    }
    // Each part weighs what it would as an RPC of its own; the few bytes of field tags and the
    // length prefix are left over and counted as `framing`.
    let parts = 0
    const charge = (part: string, bytes: number) => {
      if (bytes === 0) return
      parts += bytes
      addGossip(part, bytes)
    }
    for (const message of rpc.messages)
      charge(`topic:${message.topic}`, RPC.encode({ subscriptions: [], messages: [message] }).byteLength)
    charge('subscriptions', RPC.encode({ subscriptions: rpc.subscriptions, messages: [] }).byteLength)
    const control = rpc.control
    if (control !== undefined) {
      const empty = { ihave: [], iwant: [], graft: [], prune: [], idontwant: [] }
      for (const kind of ['ihave', 'iwant', 'graft', 'prune', 'idontwant'] as const) {
        if (control[kind].length === 0) continue
        const only = { ...empty, [kind]: control[kind] }
        charge(kind, RPC.encode({ subscriptions: [], messages: [], control: only }).byteLength)
      }
    }
    addGossip('framing', Math.max(0, frame.byteLength - parts))
  }

  /** Counts what goes through `send` and what arrives through `onData`, without touching either. */
  const meter = (
    stream: { send(data: Chunk): boolean },
    counters: TrafficCounters,
    onSend?: (data: Chunk) => void,
  ) => {
    const target = stream as { send(data: Chunk): boolean; onData?: (data: Chunk) => void }
    const send = target.send.bind(stream)
    target.send = (data) => {
      counters.out += data.byteLength
      onSend?.(data)
      return send(data)
    }
    const onData = target.onData?.bind(stream)
    if (onData !== undefined) {
      target.onData = (data) => {
        counters.in += data.byteLength
        onData(data)
      }
    }
  }

  const metrics = {
    trackMultiaddrConnection(maConn: MultiaddrConnection) {
      meter(maConn, wire)
    },
    trackProtocolStream(stream: Stream) {
      const name = stream.protocol
      const counters = protocols.get(name) ?? { in: 0, out: 0, streams: 0 }
      counters.streams++
      protocols.set(name, counters)
      const bytes = (data: Chunk) => (data instanceof Uint8Array ? data : data.subarray())
      let onSend: ((data: Chunk) => void) | undefined
      if (name.startsWith(GOSSIPSUB)) onSend = (data) => chargeRpc(bytes(data))
      else if (name.includes(KAD) && stream.direction === 'outbound') {
        // The first frame on a stream we opened is the request.
        let first = true
        onSend = (data) => {
          if (!first) return
          first = false
          const type = kadTypeOf(bytes(data))
          dhtRequests.set(type, (dhtRequests.get(type) ?? 0) + 1)
        }
      }
      meter(stream, counters, onSend)
    },
    registerMetric: () => ignored,
    registerMetricGroup: () => ignored,
    registerCounter: () => ignored,
    registerCounterGroup: () => ignored,
    registerHistogram: () => ignored,
    registerHistogramGroup: () => ignored,
    registerSummary: () => ignored,
    registerSummaryGroup: () => ignored,
    traceFunction: <F>(_name: string, fn: F) => fn,
    createTrace: () => undefined,
  }

  return {
    metrics: () => metrics as unknown as Metrics,
    snapshot: () => ({
      at: Date.now(),
      wire: { ...wire },
      protocols: Object.fromEntries([...protocols].map(([name, c]) => [name, { ...c }])),
      gossipSent: Object.fromEntries(gossipSent),
      dhtRequests: Object.fromEntries(dhtRequests),
    }),
  }
}
