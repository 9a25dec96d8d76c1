// Discovery and the cost of capacity gossip in a mesh of real daemons on loopback, each its
// own `substrate serve` process and home, joined by bootstrapping to the first one.
//   bytes   every node's mesh traffic, in + out (what it sends plus what it receives), per
//           second, over a window after the mesh has settled, at each mesh size, and how it
//           grows with the node count. Two independent counts of the same thing:
//             ss      the kernel's per-socket counters (`ss -ti`) on every TCP connection
//                     between the nodes' mesh ports: every protocol, Noise and Yamux included;
//             meter   the node's own libp2p meter (src/mesh/traffic-meter.ts): the same wire
//                     bytes, split by protocol (gossipsub, Kad-DHT, identify, ping, ledger
//                     sync…) and gossipsub's sent bytes split by topic and by control part
//                     (IHAVE, IWANT, GRAFT, PRUNE, IDONTWANT), so it says which bytes they are.
//           The target (≤ 2 KB/s per node) names capacity gossip: gossipsub's bytes in + out
//           (messages, control, framing of its own) shared out by topic, the capacity topic's
//           part. It is also checked against everything the mesh moves, in + out (stricter).
//   join    with the full mesh running, a new daemon is started: time from its spawn (and from
//           its API answering) until it is in every other daemon's capacity view; repeated.
//
// With --mesh-only the nodes are bench/mesh-worker-process.ts instead: the daemon's mesh layer
// (libp2p, capacity gossip, job protocol, model providers, pings) and nothing else, which
// separates what the mesh layer costs from what other subsystems (ledger sync, …) add.
// The window should cover a capacity keep-alive (60 s) so each node's keep-alive is in it.
//
// --ledger-keep-alive 5s sets the daemons' mesh.ledgerKeepAlive (unchanged ledger heads
// re-announced this often; default 40s): 5s is what every daemon did before it was a
// keep-alive, so a run with it and one without show what the change saved.
//
//   node bench/mesh-discovery.ts [--sizes 3,5,10] [--window 60] [--settle 30] [--joins 3] [--mesh-only]
//                                [--ledger-keep-alive 40s]

import { spawn, spawnSync } from 'node:child_process'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { generateIdentity } from '../src/identity/keys.ts'
import { signCapacityRecord } from '../src/mesh/capacity-record.ts'
import type { LinkStats } from '../src/mesh/peer-keeper.ts'
import type { TrafficCounters, TrafficSnapshot } from '../src/mesh/traffic-meter.ts'
import { sourceRevision, startDaemon } from './daemon-process.ts'
import { loadAverage, machineInfo, median, round, sleep } from './machine.ts'

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '3,5,10' },
    window: { type: 'string', default: '60' },
    joins: { type: 'string', default: '3' },
    settle: { type: 'string', default: '30' },
    'mesh-only': { type: 'boolean', default: false },
    'ledger-keep-alive': { type: 'string' },
  },
})
const LEDGER_KEEP_ALIVE = values['ledger-keep-alive']
const SIZES = values.sizes.split(',').map(Number)
const WINDOW_S = Number(values.window)
const JOINS = Number(values.joins)
const SETTLE_S = Number(values.settle)

interface Node {
  id: string
  addr: string
  pid: number
  meshPort: number
  peers(): Promise<PeersBody>
  stop(): Promise<void>
}

interface PeersBody {
  peers: Array<{ id: string }>
  gossip?: {
    published: number
    accepted: number
    rateLimited: number
    traffic?: TrafficSnapshot
    links?: LinkStats
  }
}

async function status(url: string): Promise<{ id: string; addr: string }> {
  const body = (await (await fetch(`${url}/substrate/v1/status`)).json()) as {
    id: string
    mesh: { addrs: string[] } | null
  }
  const addr = body.mesh?.addrs[0]
  if (addr === undefined) throw new Error(`${url} has no mesh address`)
  return { id: body.id, addr }
}

async function peersOf(url: string): Promise<PeersBody> {
  return (await (
    await fetch(`${url}/substrate/v1/peers`, { signal: AbortSignal.timeout(10_000) })
  ).json()) as PeersBody
}

const meshPortOf = (addr: string) => Number(/\/tcp\/(\d+)/.exec(addr)?.[1])

async function startMeshOnlyNode(bootstrap: string | undefined): Promise<Node> {
  const entry = new URL('./mesh-worker-process.ts', import.meta.url).pathname
  const args = bootstrap === undefined ? [] : ['--bootstrap', bootstrap]
  const child = spawn(process.execPath, [entry, ...args], { stdio: ['pipe', 'pipe', 'inherit'] })
  const waiting: Array<(line: string) => void> = []
  createInterface({ input: child.stdout! }).on('line', (line) => waiting.shift()?.(line))
  const nextLine = (timeoutMs: number) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the mesh process did not answer')), timeoutMs)
      waiting.push((line) => {
        clearTimeout(timer)
        resolve(line)
      })
    })
  const { id, addr } = JSON.parse(await nextLine(120_000)) as { id: string; addr: string }
  return {
    id,
    addr,
    pid: child.pid ?? 0,
    meshPort: meshPortOf(addr),
    async peers() {
      const line = nextLine(10_000)
      child.stdin!.write('peers\n')
      return JSON.parse(await line) as PeersBody
    },
    async stop() {
      if (child.exitCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.stdin!.end()
      await exited
    },
  }
}

async function startNode(bootstrap: string | undefined): Promise<Node> {
  if (values['mesh-only']) return startMeshOnlyNode(bootstrap)
  const daemon = await startDaemon({
    threads: 1,
    // Mesh-only daemons: no runner is ever started here, so the sandbox is not under test.
    sandbox: 'none',
    startTimeoutMs: 120_000,
    env: {
      ...(bootstrap === undefined ? {} : { SUBSTRATE_BOOTSTRAP: bootstrap }),
      ...(LEDGER_KEEP_ALIVE === undefined ? {} : { SUBSTRATE_LEDGER_KEEP_ALIVE: LEDGER_KEEP_ALIVE }),
    },
  })
  const { id, addr } = await status(daemon.url)
  return {
    id,
    addr,
    pid: daemon.pid,
    meshPort: meshPortOf(addr),
    peers: () => peersOf(daemon.url),
    stop: () => daemon.stop(),
  }
}

/** Bytes sent + received so far on each daemon's connections to other daemons' mesh ports. */
function meshBytes(nodes: Node[]): Map<number, { sent: number; received: number }> {
  const ports = new Set(nodes.map((n) => n.meshPort))
  const out = spawnSync('ss', ['-tinpH'], { encoding: 'utf8' }).stdout.split('\n')
  const byPid = new Map<number, { sent: number; received: number }>()
  // A socket is a line that starts with its state, then (indented) its TCP info line; not
  // every socket has the info line, so lines are paired by their indent, not by position.
  for (let i = 0; i < out.length - 1; i++) {
    const head = out[i]!
    const info = out[i + 1]!
    if (/^\s/.test(head) || !/^\s/.test(info)) continue
    const pid = Number(/pid=(\d+)/.exec(head)?.[1])
    const addrs = [...head.matchAll(/127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]))
    if (!pid || addrs.length < 2 || !addrs.some((p) => ports.has(p))) continue
    const sent = Number(/bytes_sent:(\d+)/.exec(info)?.[1] ?? 0)
    const received = Number(/bytes_received:(\d+)/.exec(info)?.[1] ?? 0)
    const total = byPid.get(pid) ?? { sent: 0, received: 0 }
    total.sent += sent
    total.received += received
    byPid.set(pid, total)
  }
  return byPid
}

async function measureBytes(nodes: Node[]) {
  // Let the mesh settle (connections, DHT self-queries and walks, gossipsub mesh) before the
  // window: the window measures a mesh at rest, not its start-up.
  await sleep(SETTLE_S * 1000)
  const before = meshBytes(nodes)
  const gossipBefore = await Promise.all(nodes.map((n) => n.peers()))
  await sleep(WINDOW_S * 1000)
  const after = meshBytes(nodes)
  const gossipAfter = await Promise.all(nodes.map((n) => n.peers()))
  const perNode = nodes.map((n) => {
    const a = after.get(n.pid) ?? { sent: 0, received: 0 }
    const b = before.get(n.pid) ?? { sent: 0, received: 0 }
    // A connection opened during the window counts from 0: still its bytes in the window.
    return {
      sentBps: Math.max(0, a.sent - b.sent) / WINDOW_S,
      receivedBps: Math.max(0, a.received - b.received) / WINDOW_S,
    }
  })
  const totals = perNode.map((p) => p.sentBps + p.receivedBps)
  const published = gossipAfter.map(
    (g, i) => (g.gossip?.published ?? 0) - (gossipBefore[i]!.gossip?.published ?? 0),
  )
  const accepted = gossipAfter.map(
    (g, i) => (g.gossip?.accepted ?? 0) - (gossipBefore[i]!.gossip?.accepted ?? 0),
  )
  return {
    ...breakdown(gossipBefore, gossipAfter),
    links: linkSummary(gossipBefore, gossipAfter),
    nodes: nodes.length,
    bytesPerSecondPerNode: {
      median: round(median(totals)),
      max: round(Math.max(...totals)),
      min: round(Math.min(...totals)),
      sentMedian: round(median(perNode.map((p) => p.sentBps))),
      bootstrapNode: round(totals[0]!),
    },
    perNodeBytesPerSecond: totals.map((t) => round(t)),
    viewSizes: gossipAfter.map((g) => g.peers.length),
    recordsPerNodePerSecond: {
      published: round(median(published) / WINDOW_S, 2),
      accepted: round(median(accepted) / WINDOW_S, 2),
    },
  }
}

const both = (c: TrafficCounters | undefined) => (c === undefined ? 0 : c.in + c.out)

/**
 * The mesh's own meter (src/mesh/traffic-meter.ts) between two snapshots, as B/s per node
 * averaged over the nodes: wire bytes in + out (Noise, Yamux and negotiation included, like
 * `ss`), each protocol's payload in + out, and what gossipsub sent, by part (out only: every
 * byte one node sends, another receives, so in + out is twice that).
 */
function breakdown(before: PeersBody[], after: PeersBody[]) {
  const pairs = after
    .map((a, i) => [before[i]?.gossip?.traffic, a.gossip?.traffic] as const)
    .filter((p): p is readonly [TrafficSnapshot, TrafficSnapshot] => p[0] !== undefined && p[1] !== undefined)
  if (pairs.length === 0) return {}
  const rate = (sum: number) => round(sum / pairs.length / WINDOW_S)
  const wire = pairs.map(([b, a]) => (both(a.wire) - both(b.wire)) / WINDOW_S)
  const protocols: Record<string, number> = {}
  const streams: Record<string, number> = {}
  const gossipSent: Record<string, number> = {}
  const dhtRequests: Record<string, number> = {}
  for (const [b, a] of pairs) {
    for (const [name, c] of Object.entries(a.protocols)) {
      protocols[name] = (protocols[name] ?? 0) + both(c) - both(b.protocols[name])
      streams[name] = (streams[name] ?? 0) + c.streams - (b.protocols[name]?.streams ?? 0)
    }
    for (const [part, bytes] of Object.entries(a.gossipSent))
      gossipSent[part] = (gossipSent[part] ?? 0) + bytes - (b.gossipSent[part] ?? 0)
    for (const [type, n] of Object.entries(a.dhtRequests ?? {}))
      dhtRequests[type] = (dhtRequests[type] ?? 0) + n - (b.dhtRequests?.[type] ?? 0)
  }
  const sorted = (o: Record<string, number>) =>
    Object.fromEntries(
      Object.entries(o)
        .map(([k, v]) => [k, rate(v)] as const)
        .sort((x, y) => y[1] - x[1]),
    )
  // What the target names: capacity gossip. gossipsub's bytes in + out (messages,
  // control, length prefixes) shared out by what each topic sends: the capacity topic's part.
  const gossipTotal = Object.values(gossipSent).reduce((a, b) => a + b, 0)
  const capacityShare = gossipTotal > 0 ? (gossipSent['topic:substrate/capacity/1'] ?? 0) / gossipTotal : 0
  const gossipsubInOut = Object.entries(protocols)
    .filter(([name]) => name.startsWith('/meshsub/'))
    .reduce((a, [, v]) => a + v, 0)
  return {
    capacityGossipInOutPerNode: rate(gossipsubInOut * capacityShare),
    meter: {
      wireInOutPerNode: { median: round(median(wire)), max: round(Math.max(...wire)) },
      protocolsInOutPerNode: sorted(protocols),
      gossipsubSentPerNode: sorted(gossipSent),
      // Kad-DHT requests each node sent (one stream each), per minute, by message type.
      dhtRequestsPerNodePerMinute: Object.fromEntries(
        Object.entries(dhtRequests).map(
          ([k, v]) => [k, round((v / pairs.length / WINDOW_S) * 60, 1)] as const,
        ),
      ),
      // Streams opened per node in the window: new gossipsub streams mean new connections.
      streamsOpenedPerNode: Object.fromEntries(
        Object.entries(streams).map(([k, v]) => [k, round(v / pairs.length, 1)] as const),
      ),
    },
  }
}

/**
 * Each node's connections at the end of the window (open, distinct peers, duplicates beyond
 * one per peer) and the connections opened / closed and redials during it, per node.
 */
function linkSummary(before: PeersBody[], after: PeersBody[]) {
  const pairs = after
    .map((a, i) => [before[i]?.gossip?.links, a.gossip?.links] as const)
    .filter((p): p is readonly [LinkStats, LinkStats] => p[0] !== undefined && p[1] !== undefined)
  if (pairs.length === 0) return null
  const spread = (values: number[]) => ({
    median: median(values),
    min: Math.min(...values),
    max: Math.max(...values),
  })
  return {
    connectionsPerNode: spread(pairs.map(([, a]) => a.connections)),
    peersPerNode: spread(pairs.map(([, a]) => a.peers)),
    duplicatesPerNode: spread(pairs.map(([, a]) => a.duplicates)),
    inWindowPerNode: {
      opened: spread(pairs.map(([b, a]) => a.opened - b.opened)),
      closed: spread(pairs.map(([b, a]) => a.closed - b.closed)),
      redials: spread(pairs.map(([b, a]) => a.redials.attempts - b.redials.attempts)),
    },
  }
}

/** Starts one more daemon and times how long until every other daemon's view has it. */
async function timeJoin(nodes: Node[], bootstrap: string) {
  const known = new Set(nodes.map((n) => n.id))
  const spawnedAt = performance.now()
  const node = await startNode(bootstrap)
  const readyAt = performance.now()
  const deadline = readyAt + 60_000
  const seenAt = new Map<string, number>()
  while (seenAt.size < nodes.length && performance.now() < deadline) {
    await Promise.all(
      nodes
        .filter((n) => !seenAt.has(n.id))
        .map(async (n) => {
          const body = await n.peers()
          if (body.peers.some((p) => p.id === node.id && !known.has(p.id)))
            seenAt.set(n.id, performance.now())
        }),
    )
    await sleep(50)
  }
  const lastSeen = Math.max(...seenAt.values())
  const result = {
    inAllViews: seenAt.size === nodes.length,
    seenBy: seenAt.size,
    fromSpawnMs: round(lastSeen - spawnedAt),
    fromReadyMs: round(lastSeen - readyAt),
    spawnToReadyMs: round(readyAt - spawnedAt),
  }
  await node.stop()
  return result
}

async function main(): Promise<void> {
  const loadBefore = loadAverage()
  const started = Date.now()
  // What one record weighs: a daemon's snapshot with the built-in model held and loaded.
  const recordBytes = signCapacityRecord(generateIdentity(), {
    models: [{ digest: `sha256:${'ab'.repeat(32)}`, name: 'substrate-tiny:latest' }],
    loaded: [`sha256:${'ab'.repeat(32)}`],
    freeSlots: 2,
    tokensPerSecond: 150.5,
    queueDepth: 0,
  }).length
  const nodes: Node[] = []
  try {
    const first = await startNode(undefined)
    nodes.push(first)
    const bootstrap = first.addr
    const sizes = []
    for (const size of SIZES) {
      while (nodes.length < size) nodes.push(await startNode(bootstrap))
      sizes.push(await measureBytes(nodes))
    }
    const joins = []
    for (let j = 0; j < JOINS; j++) joins.push(await timeJoin(nodes, bootstrap))
    const worst = Math.max(...joins.map((j) => j.fromReadyMs))
    // How the per-node cost grows: per node, per connection (n − 1 peers), and against the
    // smallest mesh measured.
    const smallest = sizes[0]!
    const growth = sizes.map((s) => ({
      nodes: s.nodes,
      inOutBytesPerSecondPerNode: s.bytesPerSecondPerNode.median,
      meterWireInOut: s.meter?.wireInOutPerNode.median ?? null,
      capacityGossipInOut: s.capacityGossipInOutPerNode ?? null,
      perPeer: round(s.bytesPerSecondPerNode.median / (s.nodes - 1)),
      vsSmallest: round(s.bytesPerSecondPerNode.median / smallest.bytesPerSecondPerNode.median, 2),
    }))
    console.log(
      JSON.stringify(
        {
          benchmark: 'mesh-discovery',
          nodes: values['mesh-only']
            ? 'mesh layer only (bench/mesh-worker-process.ts)'
            : 'substrate serve daemons',
          ledgerKeepAlive: values['mesh-only'] ? null : (LEDGER_KEEP_ALIVE ?? 'default (40s)'),
          counts:
            'bytes per node per second, in + out, on every mesh connection (ss: kernel socket counters; meter: the node’s libp2p meter), median over the nodes, after settling',
          growth,
          capacityRecordBytes: recordBytes,
          windowSeconds: WINDOW_S,
          settleSeconds: SETTLE_S,
          sizes,
          joins: { meshSize: nodes.length, rounds: joins, worstFromReadyMs: worst },
          // The issue: "capacity gossip costs ≤ 2 KB/s per node". Judged on capacity gossip, and
          // (stricter) on everything the mesh moves.
          targets: { joinMs: 5_000, bytesPerSecondPerNode: 2_048 },
          met: {
            join: joins.every((j) => j.inAllViews) && worst <= 5_000,
            capacityGossip: sizes.every(
              (s) => s.capacityGossipInOutPerNode !== undefined && s.capacityGossipInOutPerNode <= 2_048,
            ),
            allMeshTraffic: sizes.every((s) => s.bytesPerSecondPerNode.median <= 2_048),
          },
          machine: machineInfo(),
          loadAverage: { before: loadBefore, after: loadAverage() },
          wallSeconds: round((Date.now() - started) / 1000),
          source: sourceRevision(),
        },
        null,
        2,
      ),
    )
  } finally {
    await Promise.all(nodes.map((n) => n.stop()))
  }
}

await main()
