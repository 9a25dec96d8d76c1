// Ledger convergence in a 20-node mesh (issue 5: 20 daemons on loopback converge to
// identical balances ≤ 3 s, p99 of 10 runs, after the last op, including after a healed
// partition). Each node is its own OS process (test/mesh/ledger-sync-process.ts): a real
// libp2p host, a ledger in its own SQLite file and ledger sync, wired as createNode wires
// them, without the model runtime (20 full daemons do not fit a 2-core machine that others
// share; the ledger path is the same code).
//
// The mesh is a random connected graph, sparser than the full mesh that mDNS would make on
// one machine: each node dials the previous one and two random earlier ones (~5.7 links a
// node), so ops must hop through nodes that pull and re-announce. A run appends one op on one node and measures until every node reports the
// same heads digest with the expected total, from the children's own clocks (one machine).
// A partitioned run makes every node refuse the other half's nodes (hang up, and hang up
// again on any reconnect), appends an op in each half, checks that the halves stayed apart,
// then lifts the block, redials the cut edges and measures from the redial.
//
//   node bench/ledger-sync-converge.ts [nodes=20] [runs=10]

import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { loadAverage, machineInfo } from './machine.ts'

const NODES = Number(process.argv[2] ?? 20)
const RUNS = Number(process.argv[3] ?? 10)
const script = new URL('../test/mesh/ledger-sync-process.ts', import.meta.url).pathname
const dir = mkdtempSync(join(tmpdir(), 'ledger-converge-'))

interface Node {
  index: number
  child: ChildProcess
  id: string
  addr: string
  /** Latest report: total ops held, heads digest, when (child's clock). */
  total: number
  digest: string
  at: number
  /** When the node first reported each total. */
  reachedAt: Map<number, { at: number; digest: string }>
}

function start(index: number): Promise<Node> {
  const child = spawn(process.execPath, [script, join(dir, `n${index}.db`)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  return new Promise((resolve, reject) => {
    const node: Partial<Node> & { reachedAt: Node['reachedAt'] } = {
      index,
      child,
      total: 0,
      reachedAt: new Map(),
    }
    const timer = setTimeout(() => reject(new Error(`node ${index} did not start`)), 60_000)
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as Record<string, unknown>
      if (typeof msg.addr === 'string') {
        node.id = msg.id as string
        node.addr = msg.addr
        clearTimeout(timer)
        resolve(node as Node)
      }
      if (msg.error !== undefined) console.error(`node ${index}: ${String(msg.error)}`)
      if (msg.summary !== undefined)
        console.error(JSON.stringify({ node: index, ...msg, balances: undefined }))
      if (typeof msg.total === 'number') {
        node.total = msg.total
        node.digest = msg.digest as string
        node.at = msg.at as number
        // The digest at a total can change (a fork); the last report at it is what counts.
        node.reachedAt.set(msg.total, { at: msg.at as number, digest: msg.digest as string })
      }
    })
  })
}

const send = (node: Node, cmd: object) => node.child.stdin!.write(`${JSON.stringify(cmd)}\n`)

async function converged(nodes: Node[], total: number, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const digest = nodes[0]!.digest
    if (nodes.every((n) => n.total === total && n.digest === digest)) return true
    await sleep(20)
  }
  return false
}

/** Latest time any node reported the final total: when the last of them caught up. */
const lastReached = (nodes: Node[], total: number) =>
  Math.max(...nodes.map((n) => n.reachedAt.get(total)?.at ?? Infinity))

const load = [loadAverage()]
const nodes: Node[] = []
for (let i = 0; i < NODES; i++) nodes.push(await start(i))
const edges: Array<[number, number]> = []
for (let i = 1; i < NODES; i++) {
  const targets = new Set([i - 1])
  while (targets.size < Math.min(i, 3)) targets.add(Math.floor(Math.random() * i))
  for (const j of targets) edges.push([i, j])
}
for (const [i, j] of edges) send(nodes[i]!, { dial: nodes[j]!.addr })
await sleep(1_000)
for (const n of nodes) send(n, { append: 1 })
let expected = NODES
// On a loaded machine some dials time out (Noise handshakes past 20 s): the edges are dialed
// again until the whole mesh holds every node's op, which proves it connected.
for (let attempt = 0; attempt < 3 && !(await converged(nodes, expected, 30_000)); attempt++) {
  for (const [i, j] of edges) send(nodes[i]!, { dial: nodes[j]!.addr })
}
if (!(await converged(nodes, expected, 30_000))) {
  for (const n of nodes) send(n, { summary: true })
  await sleep(3_000)
  for (const n of nodes) n.child.kill('SIGKILL')
  throw new Error(`the mesh did not converge at the start: totals ${nodes.map((n) => n.total).join(' ')}`)
}
load.push(loadAverage())

const plain: number[] = []
for (let run = 0; run < RUNS; run++) {
  const author = nodes[(run * 7) % NODES]!
  expected++
  send(author, { append: 1 })
  const ok = await converged(nodes, expected)
  const appendedAt = author.reachedAt.get(expected)?.at ?? Date.now()
  plain.push(ok ? lastReached(nodes, expected) - appendedAt : Infinity)
  await sleep(200)
}
load.push(loadAverage())

const half = Math.floor(NODES / 2)
const sideOf = (i: number) => (i < half ? 0 : 1)
const cut = edges.filter(([i, j]) => sideOf(i) !== sideOf(j))
const healed: number[] = []
const heldApart: boolean[] = []
for (let run = 0; run < RUNS; run++) {
  const left = nodes.slice(0, half)
  const right = nodes.slice(half)
  // Every node refuses every node of the other half (the DHT would redial them otherwise).
  for (const a of left) for (const b of right) send(a, { block: b.id })
  for (const b of right) for (const a of left) send(b, { block: a.id })
  await sleep(500)
  send(left[run % left.length]!, { append: 1 })
  send(right[run % right.length]!, { append: 1 })
  // Each half converges on its own op; neither sees the other's while apart.
  await converged(left, expected + 1, 10_000)
  await converged(right, expected + 1, 10_000)
  heldApart.push(left[0]!.digest !== right[0]!.digest)
  expected += 2
  for (const n of nodes) send(n, { unblock: true })
  await sleep(100)
  const healAt = Date.now()
  for (const [i, j] of cut) send(nodes[i]!, { dial: nodes[j]!.addr })
  const ok = await converged(nodes, expected)
  // Ops that crossed while "apart" would make this negative: such a run does not count.
  healed.push(ok ? lastReached(nodes, expected) - healAt : Infinity)
  await sleep(200)
}
load.push(loadAverage())

for (const n of nodes) send(n, { stop: true })
await sleep(2_000)
for (const n of nodes) if (n.child.exitCode === null) n.child.kill('SIGKILL')
rmSync(dir, { recursive: true, force: true })

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b)
const p = (xs: number[], q: number) => sorted(xs)[Math.min(xs.length - 1, Math.ceil(q * xs.length) - 1)]!
console.log(
  JSON.stringify(
    {
      bench: 'ledger-sync-converge',
      machine: machineInfo(),
      loadAverage: load,
      nodes: NODES,
      edges: edges.length,
      cutEdges: cut.length,
      runs: RUNS,
      afterAppendMs: plain.map(Math.round),
      afterAppendP50Ms: Math.round(p(plain, 0.5)),
      afterAppendP99Ms: Math.round(p(plain, 0.99)),
      afterHealMs: healed.map(Math.round),
      afterHealP50Ms: Math.round(p(healed, 0.5)),
      afterHealP99Ms: Math.round(p(healed, 0.99)),
      partitionHeld: heldApart,
      targetMs: 3000,
    },
    null,
    2,
  ),
)
process.exit(0)
