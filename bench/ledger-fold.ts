// Balance fold on a large ledger (issue 5: 1M-op cold fold ≤ 10 s; incremental ≤ 50 µs/op).
// Ops are synthetic facts (what ingest stores after verifying): the fold never re-verifies,
// so signing a million ops would only measure the generator. The cold fold is measured
// twice: as a daemon restart does it — a fresh process that opens the SQLite file and folds
// the facts it reads back (in this process the heap holds the generated ops, and the garbage
// collector would charge the fold for them) — and in memory.
//
//   node --max-old-space-size=6144 bench/ledger-fold.ts [ops=1000000] [sqlite=1]

import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateIdentity } from '../src/identity/keys.ts'
import { allBalances, applyOp, balanceOf, DAY_MS, type FoldOp, foldOps } from '../src/ledger/balances.ts'
import { restoreFoldState, serializeFoldState } from '../src/ledger/fold-checkpoint.ts'
import { createLedger } from '../src/ledger/ledger.ts'
import { openDatabase } from '../src/store/database.ts'
import { insertLedgerOp } from '../src/store/ledger-table.ts'

const digest = (value: unknown) => createHash('sha256').update(JSON.stringify(value)).digest('hex')

// The restart: `ledger-fold.ts --fold-db FILE NOW` folds FILE's ledger and prints its time.
if (process.argv[2] === '--fold-db') {
  const db = openDatabase(process.argv[3]!)
  const t = performance.now()
  const ledger = createLedger({ db }, { now: () => Number(process.argv[4]), checkpointName: 'bench' })
  ledger.start()
  const balances = ledger.balances()
  const ms = performance.now() - t
  db.close()
  console.log(JSON.stringify({ ms, digest: digest(balances) }))
  process.exit(0)
}

const N = Number(process.argv[2] ?? 1_000_000)
const WITH_SQLITE = (process.argv[3] ?? '1') !== '0'
const INCREMENTAL = 100_000
const T0 = Date.UTC(2026, 0, 1)
const NODES = 2000
const MEMBERS = 400

let seed = 42
const random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const pick = <T>(list: readonly T[]) => list[Math.floor(random() * list.length)]!
const nodes = Array.from({ length: NODES }, () => generateIdentity().id)
const members = Array.from({ length: MEMBERS }, () => generateIdentity().id)
let cidCounter = 0
const cid = () => `bafyreib${(++cidCounter).toString(36).padStart(51, '0')}`

function receipt(at: number): FoldOp {
  const worker = pick(nodes)
  const requester = pick(nodes)
  return {
    cid: cid(),
    author: requester,
    at,
    facts: {
      kind: 'receipt',
      receipt: cid(),
      worker,
      requester,
      promptTokens: Math.floor(random() * 500),
      outputTokens: Math.floor(random() * 800),
      created: at,
    },
  }
}

function generate(n: number, from: number): FoldOp[] {
  const ops: FoldOp[] = []
  for (const m of members) ops.push({ cid: cid(), author: m, at: from, facts: { kind: 'member-genesis' } })
  nodes.slice(0, NODES / 2).forEach((node, i) => {
    ops.push({ cid: cid(), author: members[i % MEMBERS]!, at: from, facts: { kind: 'node-binding', node } })
  })
  for (const m of members)
    ops.push({ cid: cid(), author: pick(members), at: from, facts: { kind: 'vouch', member: m } })
  while (ops.length < n) ops.push(receipt(from + Math.floor((ops.length / n) * 30 * DAY_MS)))
  return ops
}

const ops = generate(N, T0)
const now = T0 + 30 * DAY_MS

// Cold fold as a daemon restart does it: facts read back from SQLite, first, while this
// process holds only the generated ops (not yet the folds and checkpoints below: a
// restarting daemon has no such neighbour eating the machine's memory)
let sqliteColdFoldMs: number | undefined
let sqliteWriteMs: number | undefined
let syncMs: number | undefined
let restartDigest: string | undefined
if (WITH_SQLITE) {
  const dir = mkdtempSync(join(tmpdir(), 'ledger-fold-'))
  const db = openDatabase(join(dir, 'substrate.db'))
  const seqs = new Map<string, number>()
  const bytes = new Uint8Array(8)
  let t = performance.now()
  for (let i = 0; i < ops.length; i += 10_000) {
    db.transaction(() => {
      for (const op of ops.slice(i, i + 10_000)) {
        const seq = (seqs.get(op.author) ?? 0) + 1
        seqs.set(op.author, seq)
        const row = { cid: op.cid, author: op.author, seq, kind: op.facts.kind, at: op.at, bytes }
        insertLedgerOp(db, { ...row, facts: JSON.stringify(op.facts) })
      }
    })
  }
  db.close()
  sqliteWriteMs = performance.now() - t
  // The file just written is still being flushed to disk; a restart reads a settled file.
  t = performance.now()
  spawnSync('sync')
  syncMs = performance.now() - t
  const child = spawnSync(
    process.execPath,
    [...process.execArgv, process.argv[1]!, '--fold-db', join(dir, 'substrate.db'), String(now)],
    { encoding: 'utf8', maxBuffer: 1 << 20 },
  )
  if (child.status !== 0) throw new Error(`the restart fold failed: ${child.stderr}`)
  const restart = JSON.parse(child.stdout) as { ms: number; digest: string }
  restartDigest = restart.digest
  sqliteColdFoldMs = restart.ms
  rmSync(dir, { recursive: true, force: true })
}

// Cold fold in memory
let t = performance.now()
const state = foldOps(ops, [])
const balances = allBalances(state, now)
const coldFoldMs = performance.now() - t
if (restartDigest !== undefined && restartDigest !== digest(balances)) throw new Error('SQLite fold differs')

// Incremental: new receipts one at a time, reading the worker's balance after each (what
// a worker's admission does), plus a binding every 1000 ops (a node joining a member).
const fresh: FoldOp[] = []
for (let i = 0; i < INCREMENTAL; i++) {
  if (i % 1000 === 999) {
    fresh.push({
      cid: cid(),
      author: pick(members),
      at: now,
      facts: { kind: 'node-binding', node: pick(nodes) },
    })
  } else fresh.push(receipt(now + i))
}
t = performance.now()
for (const op of fresh) {
  applyOp(state, op)
  balanceOf(state, op.facts.kind === 'receipt' ? op.facts.worker : op.author, now)
}
const incrementalUsPerOp = ((performance.now() - t) * 1000) / INCREMENTAL

// The incremental result must equal a cold fold of the same ops.
const check = foldOps([...ops, ...fresh], [])
const incrementalEqualsCold =
  JSON.stringify(allBalances(check, now)) === JSON.stringify(allBalances(state, now))

// Checkpoint save and restore
t = performance.now()
const saved = serializeFoldState(state)
const checkpointSaveMs = performance.now() - t
t = performance.now()
allBalances(restoreFoldState(saved), now)
const checkpointRestoreMs = performance.now() - t

console.log(
  JSON.stringify(
    {
      bench: 'ledger-fold',
      cpu: /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown',
      loadAverage: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
      node: process.version,
      ops: N,
      receipts: state.receipts.size - INCREMENTAL + INCREMENTAL / 1000,
      members: balances.length,
      coldFoldMs: Math.round(coldFoldMs),
      sqliteColdFoldMs: sqliteColdFoldMs === undefined ? null : Math.round(sqliteColdFoldMs),
      sqliteWriteMs: sqliteWriteMs === undefined ? null : Math.round(sqliteWriteMs),
      syncMs: syncMs === undefined ? null : Math.round(syncMs),
      incrementalOps: INCREMENTAL,
      incrementalUsPerOp: Number(incrementalUsPerOp.toFixed(2)),
      incrementalEqualsCold,
      checkpointBytes: saved.length,
      checkpointSaveMs: Math.round(checkpointSaveMs),
      checkpointRestoreMs: Math.round(checkpointRestoreMs),
      heapUsedMiB: Math.round(process.memoryUsage().heapUsed / 2 ** 20),
      targets: { coldFoldMs: 10_000, incrementalUsPerOp: 50 },
    },
    null,
    2,
  ),
)
