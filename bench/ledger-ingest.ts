// Verify + ingest throughput of receipt ops on one core (issue 5: target ≥ 20,000/s).
// A receipt op carries three Ed25519 signatures (the op, the requester's countersignature,
// the worker's receipt), so the raw verify rate of this CPU, measured in the same run, is
// printed beside it: a receipt seen for the first time can never beat verifies/s ÷ 3.
// Each receipt is logged twice, by its requester and by its worker, as the daemon does; the
// second copy reuses the first's verification (one signature: the op's own).
//
//   node bench/ledger-ingest.ts [receipts=6000]

import { generateKeyPairSync, sign, verify } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { encodeEnvelope, signEnvelope } from '../src/identity/envelope.ts'
import { generateIdentity, type Identity } from '../src/identity/keys.ts'
import { createLedgerLog } from '../src/ledger/log.ts'
import { decodeOp, signOpBytes } from '../src/ledger/ops.ts'
import { openDatabase } from '../src/store/database.ts'

const N = Number(process.argv[2] ?? 6000)
const BATCH = 500
const T0 = Date.UTC(2026, 0, 15, 12)
const digest = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`

function receiptOps(n: number): { first: Uint8Array[]; second: Uint8Array[] } {
  const workers = Array.from({ length: 10 }, () => generateIdentity())
  const requesters = Array.from({ length: 10 }, () => generateIdentity())
  const heads = new Map<Identity, { seq: number; prev: string | null }>()
  const first: Uint8Array[] = []
  const second: Uint8Array[] = []
  const logOp = (author: Identity, receipt: Uint8Array, at: number) => {
    const head = heads.get(author) ?? { seq: 0, prev: null }
    const bytes = signOpBytes(
      author,
      { seq: head.seq + 1, prev: head.prev, kind: 'receipt', body: { receipt } },
      { now: at },
    )
    heads.set(author, { seq: head.seq + 1, prev: decodeOp(bytes, { now: at }).cid })
    return bytes
  }
  for (let i = 0; i < n; i++) {
    const worker = workers[i % workers.length]!
    const requester = requesters[(i * 7) % requesters.length]!
    const inner = encodeEnvelope(
      signEnvelope(
        worker,
        'receipt',
        {
          job: `bafyjob${i}`,
          requester: requester.id,
          model: digest(1),
          outputHash: digest(i),
          promptTokens: 50,
          outputTokens: 200,
          computeMs: 900,
        },
        { now: T0 + i },
      ),
    )
    const receipt = encodeEnvelope(
      signEnvelope(requester, 'receipt-countersign', { receipt: inner }, { now: T0 + i }),
    )
    first.push(logOp(requester, receipt, T0 + i))
    second.push(logOp(worker, receipt, T0 + i))
  }
  return { first, second }
}

function rate(count: number, ms: number): number {
  return Math.round((count / ms) * 1000)
}

function rawVerifyRate(): number {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const data = new Uint8Array(600)
  const sig = sign(null, data, privateKey)
  const n = 3000
  const t = performance.now()
  for (let i = 0; i < n; i++) verify(null, data, publicKey, sig)
  return rate(n, performance.now() - t)
}

const { first, second } = receiptOps(N)
const now = () => T0 + N + 60_000
const verifyBefore = rawVerifyRate()

// 1. verification alone (decodeOp: op signature + both receipt signatures + schemas)
let t = performance.now()
for (const bytes of first) decodeOp(bytes, { now: now() })
const decodeRate = rate(N, performance.now() - t)

// 2. verify + store in SQLite (a file database in WAL mode, as the daemon runs it), first
// the requesters' copies, then the workers' copies of the same receipts
const dir = mkdtempSync(join(tmpdir(), 'ledger-ingest-'))
const db = openDatabase(join(dir, 'substrate.db'))
const log = createLedgerLog({ db }, { now })
const ingestAll = (ops: Uint8Array[]) => {
  const started = performance.now()
  let added = 0
  for (let i = 0; i < ops.length; i += BATCH) added += log.ingestMany(ops.slice(i, i + BATCH)).added
  return { added, ms: performance.now() - started }
}
const firstRun = ingestAll(first)
const secondRun = ingestAll(second)
const added = firstRun.added + secondRun.added

// 3. the same ops again, as a re-sync would send them: duplicates cost a hash and a lookup
t = performance.now()
let duplicates = 0
for (let i = 0; i < N; i += BATCH) duplicates += log.ingestMany(first.slice(i, i + BATCH)).duplicates
const duplicateRate = rate(N, performance.now() - t)
db.close()
rmSync(dir, { recursive: true, force: true })
const verifyAfter = rawVerifyRate()

const ed25519VerifiesPerSec = Math.round((verifyBefore + verifyAfter) / 2)
console.log(
  JSON.stringify(
    {
      bench: 'ledger-ingest',
      cpu: /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown',
      loadAverage: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
      node: process.version,
      receipts: N,
      receiptOps: 2 * N,
      added,
      duplicates,
      ed25519VerifiesPerSec,
      boundReceiptsPerSec: Math.round(ed25519VerifiesPerSec / 3),
      verifyReceiptsPerSec: decodeRate,
      verifyAndIngestFirstCopyPerSec: rate(N, firstRun.ms),
      verifyAndIngestSecondCopyPerSec: rate(N, secondRun.ms),
      verifyAndIngestReceiptOpsPerSec: rate(2 * N, firstRun.ms + secondRun.ms),
      duplicateIngestPerSec: duplicateRate,
      firstCopyShareOfBound: Number((rate(N, firstRun.ms) / (ed25519VerifiesPerSec / 3)).toFixed(2)),
      target: 20_000,
    },
    null,
    2,
  ),
)
