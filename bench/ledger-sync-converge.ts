// Ledger convergence of 20 daemons (issue 5: 20 daemons converge to identical balances ≤ 3 s,
// p99 of 10 runs, after the last op, including after a healed partition).
//
// Every node is a real `substrate serve` process (its own SQLite home, libp2p host, model
// store, runtime, API, ledger and ledger sync, as createNode builds them). The nodes live in
// two network namespaces the bench creates, ten in each, joined by one veth pair: the mesh
// listens on the namespace's veth address, the API on the namespace's loopback. Each node
// bootstraps to the one started before it and two random earlier ones (a sparse random
// graph, ~5.7 links a node, so ops must cross nodes that pass them on; DHT random walk may
// add links as in any daemon).
//
// A run appends one op (POST /substrate/v1/ledger/vouch) on one node and ends when all 20
// report the same heads digest at the expected total. Times come from the daemons' own
// debug log lines (`ledger heads`: total, digest and whether the change came by eager push,
// by a pull or locally; `ledger ops pulled`: how long the pull took), on one machine clock;
// nothing is polled, so measuring costs the daemons nothing.
// A partitioned run takes the veth pair down (both ends: the halves really cannot reach each
// other; their TCP connections stay open, unanswered, as across a cut cable; this kernel has
// no netem), appends one op in each
// half, checks that each half converged on its own op and not on the other's, then lifts the
// loss and measures from that moment.
//
// Start-up is measured apart: 20 daemons that have just started (connecting, identifying,
// walking the DHT, pulling each other's first ops) keep a 2-core machine busy for a while,
// and an append then waits for CPU, not for the protocol. So one run is made right after the
// first convergence and reported as `duringStartUp`; then the bench waits (≤ 90 s) until the
// daemons together use less than 0.5 core over 5 s, prints how long that took and the cores
// at that point (`settle`), and only then makes the measured runs.
//
// Bounded: each start ≤ 120 s, first convergence ≤ 90 s, settling ≤ 90 s, each run ≤ 15 s
// (heal ≤ 20 s), the append runs ≤ 150 s and the heal runs ≤ 240 s in all; whatever was
// measured is printed.
// Prints the load average at every phase and the CPU seconds the daemons used, so CPU
// starvation on a small machine can be told apart from protocol latency.
//
// A third argument sets the daemons' mesh.ledgerKeepAlive (unchanged heads re-announced this
// long after a node's last announcement; default 40s; 5s is the old fixed tick), to compare.
//
//   node bench/ledger-sync-converge.ts [nodes=20] [runs=10] [ledgerKeepAlive]
// Needs root and iproute2 (network namespaces).

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { type DaemonProcess, startDaemonProcess, stopAllDaemons } from '../test/helpers/daemon-process.ts'
import {
  createTopology,
  deleteNamespaces,
  nsFetch,
  nsName,
  nsRun,
  removeStaleNamespaces,
} from '../test/helpers/netns.ts'
import { loadAverage, machineInfo, median } from './machine.ts'

const NODES = Number(process.argv[2] ?? 20)
const RUNS = Number(process.argv[3] ?? 10)
const KEEP_ALIVE = process.argv[4]
// Each phase of runs stops starting runs past its budget (a loaded machine), and says so.
const APPEND_PHASE_MS = 150_000
const HEAL_PHASE_MS = 240_000
const RUN_TIMEOUT_MS = 15_000
// Settled: the daemons together below this many cores over the window (bounded wait).
const SETTLE_CORES = 0.5
const SETTLE_WINDOW_MS = 5_000
const SETTLE_MAX_MS = 90_000
const HEAL_TIMEOUT_MS = 20_000
const started = Date.now()

interface Reach {
  at: number
  digest: string
  via: string
}
interface Node {
  index: number
  side: 0 | 1
  ns: string
  daemon: DaemonProcess
  total: number
  digest: string
  /** When the node first held each total (the last report at that total wins: a fork). */
  reached: Map<number, Reach>
  pulls: Array<{ at: number; ms: number; added: number }>
}

const ns = [nsName('cvleft'), nsName('cvright')] as const
const addrs = ['10.231.0.1', '10.231.0.2'] as const
const devs = ['cvl', 'cvr'] as const

function follow(node: Node): void {
  const take = (line: string) => {
    if (!line.startsWith('{')) return
    let entry: Record<string, unknown>
    try {
      entry = JSON.parse(line) as Record<string, unknown>
    } catch {
      return
    }
    const at = Date.parse(String(entry.time))
    if (entry.msg === 'ledger heads' && typeof entry.total === 'number') {
      node.total = entry.total
      node.digest = String(entry.digest)
      node.reached.set(entry.total, { at, digest: node.digest, via: String(entry.via ?? 'start') })
    } else if (entry.msg === 'ledger ops pulled') {
      node.pulls.push({ at, ms: Number(entry.ms), added: Number(entry.added) })
    } else if (entry.level === 'error') {
      console.error(`node ${node.index}: ${line}`)
    }
  }
  // What the daemon wrote before we listened, then every line as it comes.
  const backlog = node.daemon.stderr().split('\n')
  let partial = backlog.pop() ?? ''
  for (const line of backlog) take(line)
  node.daemon.child.stderr!.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) take(line)
  })
}

/** The whole machine's CPU ticks so far: busy and total (/proc/stat). */
function machineTicks(): { busy: number; total: number } {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number)
  const total = fields.reduce((a, b) => a + b, 0)
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0)
  return { busy: total - idle, total }
}

/** CPU seconds (user + system) the daemons have used so far, from /proc. */
function daemonCpuSeconds(nodes: Node[]): number {
  let ticks = 0
  for (const n of nodes) {
    try {
      const stat = readFileSync(`/proc/${n.daemon.pid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      ticks += Number(fields[11]) + Number(fields[12])
    } catch {}
  }
  return ticks / 100
}

/**
 * Waits (≤ SETTLE_MAX_MS) until the daemons together used less than SETTLE_CORES over the
 * last SETTLE_WINDOW_MS: how long that took, and the cores of the last window.
 */
async function settle(nodes: Node[]): Promise<{ settled: boolean; waitedMs: number; daemonCores: number }> {
  const from = Date.now()
  const samples = [{ at: from, cpu: daemonCpuSeconds(nodes) }]
  let cores = Number.NaN
  while (Date.now() - from < SETTLE_MAX_MS) {
    await sleep(500)
    const now = { at: Date.now(), cpu: daemonCpuSeconds(nodes) }
    samples.push(now)
    const past = samples.findLast((s) => now.at - s.at >= SETTLE_WINDOW_MS)
    if (past === undefined) continue
    cores = (now.cpu - past.cpu) / ((now.at - past.at) / 1000)
    if (cores < SETTLE_CORES) return { settled: true, waitedMs: now.at - from, daemonCores: round2(cores) }
  }
  return { settled: false, waitedMs: Date.now() - from, daemonCores: round2(cores) }
}
const round2 = (x: number) => Math.round(x * 100) / 100

async function converged(nodes: Node[], total: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const digest = nodes[0]!.digest
    if (nodes.every((n) => n.total === total && n.digest === digest)) return true
    await sleep(20)
  }
  return false
}

async function vouch(author: Node, member: Node): Promise<void> {
  const res = await nsFetch(author.ns, `${author.daemon.url}/substrate/v1/ledger/vouch`, {
    method: 'POST',
    body: JSON.stringify({ member: member.daemon.id }),
  })
  if (res.status !== 200) throw new Error(`vouch on node ${author.index}: ${res.status} ${res.body}`)
}

const cut = async (on: boolean) => {
  for (const [i, name] of ns.entries()) await nsRun(name, ['ip', 'link', 'set', devs[i]!, on ? 'down' : 'up'])
}

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b)
const pct = (xs: number[], q: number) =>
  xs.length === 0 ? null : sorted(xs)[Math.min(xs.length - 1, Math.ceil(q * xs.length) - 1)]!
const ms = (x: number | null) => (x === null || !Number.isFinite(x) ? null : Math.round(x))
/** Every run's time with its p50 and p99, in whole ms. */
const spread = (xs: number[]) => ({
  ms: xs.map((x) => ms(x)),
  p50Ms: ms(pct(xs, 0.5)),
  p99Ms: ms(pct(xs, 0.99)),
})
/** The median of one per-run field (a run without it counts as never). */
const medianOf = (runs: Array<Record<string, unknown>>, key: string) =>
  ms(
    pct(
      runs.map((r) => Number(r[key] ?? Number.POSITIVE_INFINITY)),
      0.5,
    ),
  )

/** When every node held `total`, relative to `from`; how each got it; how far the spread. */
function arrivals(nodes: Node[], total: number, from: number) {
  const times = nodes.map((n) => (n.reached.get(total)?.at ?? Number.POSITIVE_INFINITY) - from)
  const via: Record<string, number> = {}
  for (const n of nodes) {
    const v = n.reached.get(total)?.via ?? 'never'
    via[v] = (via[v] ?? 0) + 1
  }
  return { times, via }
}

const load: Array<{ phase: string; at: number; load: string }> = []
const mark = (phase: string) => {
  load.push({ phase, at: Math.round((Date.now() - started) / 1000), load: loadAverage() })
  console.error(`${new Date().toISOString()} ${phase} (load ${loadAverage()})`)
}

const nodes: Node[] = []
const plain: number[] = []
const plainDetail: Array<Record<string, unknown>> = []
const healed: number[] = []
const healDetail: Array<Record<string, unknown>> = []
const heldApart: boolean[] = []
const cpu: Record<
  string,
  { cpuSeconds: number; wallSeconds: number; daemonCores: number; machineBusyShare: number }
> = {}
let machineBefore = machineTicks()
const phaseCpu = (nodes: Node[], cpuBefore: number, wallBefore: number) => {
  const now = machineTicks()
  const cpuSeconds = daemonCpuSeconds(nodes) - cpuBefore
  const wallSeconds = (Date.now() - wallBefore) / 1000
  const share = (now.busy - machineBefore.busy) / Math.max(1, now.total - machineBefore.total)
  return {
    cpuSeconds: Math.round(cpuSeconds * 10) / 10,
    wallSeconds: Math.round(wallSeconds * 10) / 10,
    /** Cores the 20 daemons used on average. */
    daemonCores: Math.round((cpuSeconds / Math.max(0.1, wallSeconds)) * 100) / 100,
    /** Of all the machine's CPU time, the share anything used (1 = saturated). */
    machineBusyShare: Math.round(share * 100) / 100,
  }
}
let startSeconds = 0
let duringStartUp: Record<string, unknown> | undefined
let settled: Awaited<ReturnType<typeof settle>> | undefined
let firstConvergeMs: number | null = null
let abort: string | undefined

// Every daemon's log (debug level), kept for a look at what a slow run did.
const logDir = join(tmpdir(), `ledger-converge-logs-${process.pid}`)
const stopEverything = async () => {
  mkdirSync(logDir, { recursive: true })
  for (const n of nodes) writeFileSync(join(logDir, `node-${n.index}.log`), n.daemon.stderr())
  for (const n of nodes) n.daemon.child.kill('SIGTERM')
  await stopAllDaemons()
  await deleteNamespaces([...ns])
}
process.on('SIGINT', () => {
  void stopEverything().then(() => process.exit(130))
})

try {
  mark('before')
  await removeStaleNamespaces()
  await createTopology(
    [...ns],
    [
      {
        a: { ns: ns[0], dev: devs[0], addr: `${addrs[0]}/24` },
        b: { ns: ns[1], dev: devs[1], addr: `${addrs[1]}/24` },
      },
    ],
  )
  const half = Math.floor(NODES / 2)
  const sideOf = (i: number): 0 | 1 => (i < half ? 0 : 1)
  // Node 0 first, then the rest four at a time, each bootstrapping to the last node up and
  // two random others already up.
  const startOne = async (index: number): Promise<Node> => {
    const side = sideOf(index)
    const up = nodes.length
    const targets = new Set<number>()
    if (up > 0) targets.add(up - 1)
    while (targets.size < Math.min(up, 3)) targets.add(Math.floor(Math.random() * up))
    const bootstrap = [...targets].map((t) => nodes[t]!.daemon.meshAddrs[0]!)
    const daemon = await startDaemonProcess(
      [
        '--mesh-listen',
        `/ip4/${addrs[side]}/tcp/0`,
        '--log-level',
        'debug',
        ...(KEEP_ALIVE === undefined ? [] : ['--ledger-keep-alive', KEEP_ALIVE]),
        ...(bootstrap.length > 0 ? ['--bootstrap', bootstrap.join(',')] : []),
      ],
      120_000,
      { netns: ns[side] },
    )
    const node: Node = {
      index,
      side,
      ns: ns[side],
      daemon,
      total: 0,
      digest: '',
      reached: new Map(),
      pulls: [],
    }
    follow(node)
    return node
  }
  const t0 = Date.now()
  nodes.push(await startOne(0))
  while (nodes.length < NODES) {
    const batch = Array.from({ length: Math.min(4, NODES - nodes.length) }, (_, k) => nodes.length + k)
    // Bootstrap targets are drawn from nodes already up, so the batch can start together.
    const up = await Promise.all(batch.map((i) => startOne(i)))
    nodes.push(...up)
  }
  startSeconds = Math.round((Date.now() - t0) / 100) / 10
  mark('started')

  // Every node's own two ops (member-genesis, node-binding) everywhere: the mesh is connected.
  let expected = 2 * NODES
  const c0 = Date.now()
  if (!(await converged(nodes, expected, 90_000))) {
    throw new Error(`the mesh did not converge at the start: totals ${nodes.map((n) => n.total).join(' ')}`)
  }
  firstConvergeMs = Date.now() - c0
  mark('converged')

  /** One op (author vouches for member) appended on one node; ends when all hold it (≤ RUN_TIMEOUT_MS). */
  const appendRun = async (author: Node, member: Node) => {
    expected++
    await vouch(author, member)
    const ok = await converged(nodes, expected, RUN_TIMEOUT_MS)
    const appendedAt = author.reached.get(expected)?.at ?? Number.NaN
    const { times, via } = arrivals(nodes, expected, appendedAt)
    const others = times.filter((_, i) => i !== author.index)
    const detail = {
      author: author.index,
      converged: ok,
      firstOtherMs: ms(Math.min(...others)),
      medianNodeMs: ms(median(others)),
      lastMs: ms(Math.max(...others)),
      via,
    }
    // A run that timed out still has stragglers catching up: let them (bounded), so the next
    // run starts from one ledger and its totals mean what they say.
    if (!ok) await converged(nodes, expected, RUN_TIMEOUT_MS)
    return { ms: ok ? Math.max(...times) : Number.POSITIVE_INFINITY, detail }
  }

  // One run while the mesh is still starting up (not part of the target's numbers).
  {
    const cpuBefore = daemonCpuSeconds(nodes)
    const wallBefore = Date.now()
    machineBefore = machineTicks()
    // A pair no measured run or heal run vouches with (a second vouch is refused).
    const { ms: took, detail } = await appendRun(nodes[4 % NODES]!, nodes[6 % NODES]!)
    duringStartUp = { ms: ms(took), ...detail, ...phaseCpu(nodes, cpuBefore, wallBefore) }
    mark('run during start-up')
  }
  settled = await settle(nodes)
  mark(
    `${settled.settled ? 'settled' : 'not settled'} after ${Math.round(settled.waitedMs / 100) / 10} s ` +
      `(daemons ${settled.daemonCores} cores over ${SETTLE_WINDOW_MS / 1000} s)`,
  )

  let cpuBefore = daemonCpuSeconds(nodes)
  let wallBefore = Date.now()
  machineBefore = machineTicks()
  const appendDeadline = Date.now() + APPEND_PHASE_MS
  for (let run = 0; run < RUNS && Date.now() < appendDeadline; run++) {
    const { ms: took, detail } = await appendRun(
      nodes[(run * 7) % NODES]!,
      nodes[(run * 7 + 1 + run) % NODES]!,
    )
    plain.push(took)
    plainDetail.push(detail)
    await sleep(300)
  }
  cpu.afterAppend = phaseCpu(nodes, cpuBefore, wallBefore)
  mark('after append runs')

  cpuBefore = daemonCpuSeconds(nodes)
  wallBefore = Date.now()
  machineBefore = machineTicks()
  const left = nodes.filter((n) => n.side === 0)
  const right = nodes.filter((n) => n.side === 1)
  const healDeadline = Date.now() + HEAL_PHASE_MS
  for (let run = 0; run < RUNS && Date.now() < healDeadline; run++) {
    await cut(true)
    await sleep(300)
    const authors = [left[run % left.length]!, right[run % right.length]!] as const
    await Promise.all([
      vouch(authors[0], right[(run + 1) % right.length]!),
      vouch(authors[1], left[(run + 1) % left.length]!),
    ])
    const okLeft = await converged(left, expected + 1, 10_000)
    const okRight = await converged(right, expected + 1, 10_000)
    heldApart.push(okLeft && okRight && left[0]!.digest !== right[0]!.digest)
    expected += 2
    await cut(false)
    const healAt = Date.now()
    const ok = await converged(nodes, expected, HEAL_TIMEOUT_MS)
    const { times, via } = arrivals(nodes, expected, healAt)
    healed.push(ok ? Math.max(...times) : Number.POSITIVE_INFINITY)
    healDetail.push({
      converged: ok,
      halvesConvergedApart: okLeft && okRight,
      firstCrossMs: ms(Math.min(...times)),
      medianNodeMs: ms(median(times)),
      lastMs: ms(Math.max(...times)),
      via,
    })
    if (!ok) await converged(nodes, expected, HEAL_TIMEOUT_MS)
    await sleep(300)
  }
  cpu.afterHeal = phaseCpu(nodes, cpuBefore, wallBefore)
  mark('after heal runs')
} catch (err) {
  abort = err instanceof Error ? err.message : String(err)
  mark('aborted')
} finally {
  await stopEverything()
}

const pullMs = nodes.flatMap((n) => n.pulls.map((p) => p.ms))
const summary = {
  bench: 'ledger-sync-converge',
  date: new Date().toISOString(),
  machine: machineInfo(),
  nodes: NODES,
  runs: RUNS,
  ledgerKeepAlive: KEEP_ALIVE ?? 'default (40s)',
  ...(abort === undefined ? {} : { aborted: abort }),
  loadAverage: load,
  startSeconds,
  firstConvergeMs,
  /** One append right after the first convergence, while the mesh still starts up. */
  duringStartUp: duringStartUp ?? null,
  /** The wait for the daemons' CPU to settle before the measured runs. */
  settle:
    settled === undefined
      ? null
      : { ...settled, thresholdCores: SETTLE_CORES, windowMs: SETTLE_WINDOW_MS, maxMs: SETTLE_MAX_MS },
  daemonCpu: cpu,
  afterAppend: {
    ...spread(plain),
    /** Author to the first other node: one gossip hop, the unit the rest is made of. */
    oneHopP50Ms: medianOf(plainDetail, 'firstOtherMs'),
    runs: plainDetail,
  },
  afterHeal: {
    ...spread(healed),
    /** Link up to the first node holding the other half's op: TCP resending what waited. */
    firstCrossP50Ms: medianOf(healDetail, 'firstCrossMs'),
    partitionHeld: heldApart,
    runs: healDetail,
  },
  pulls: { count: pullMs.length, p50Ms: ms(pct(pullMs, 0.5)), p99Ms: ms(pct(pullMs, 0.99)) },
  targetMs: 3000,
  wallSeconds: Math.round((Date.now() - started) / 1000),
  daemonLogs: logDir,
}
console.log(JSON.stringify(summary, null, 2))
const busy = (c: (typeof cpu)[string] | undefined) =>
  c === undefined
    ? 'n/a'
    : `daemons ${c.daemonCores} cores, machine ${Math.round(c.machineBusyShare * 100)}% busy`
const settleText =
  settled === undefined
    ? 'not reached'
    : `${settled.settled ? 'settled' : 'NOT settled'} after ${Math.round(settled.waitedMs / 1000)} s at ` +
      `${settled.daemonCores} cores`
console.error(
  `during start-up (one run right after first convergence): ${duringStartUp?.ms ?? 'n/a'} ms ` +
    `(daemons ${duringStartUp?.daemonCores ?? 'n/a'} cores); start-up ${settleText} (< ${SETTLE_CORES} core ` +
    `over ${SETTLE_WINDOW_MS / 1000} s, ≤ ${SETTLE_MAX_MS / 1000} s)`,
)
console.error(
  `after an append: p50 ${summary.afterAppend.p50Ms} ms, p99 ${summary.afterAppend.p99Ms} ms, one hop p50 ` +
    `${summary.afterAppend.oneHopP50Ms} ms (${busy(cpu.afterAppend)}); after a healed partition: p50 ` +
    `${summary.afterHeal.p50Ms} ms, p99 ${summary.afterHeal.p99Ms} ms, first crossing p50 ` +
    `${summary.afterHeal.firstCrossP50Ms} ms (${busy(cpu.afterHeal)}); target ≤ 3000 ms p99; load ` +
    `${load.map((l) => `${l.phase} ${l.load.split(' ')[0]}`).join(', ')}; start ${startSeconds} s; ` +
    `heads keep-alive ${summary.ledgerKeepAlive}`,
)
process.exit(abort === undefined ? 0 : 1)
