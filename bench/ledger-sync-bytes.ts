// Ledger sync cost ∝ difference (issue 5: two nodes sharing 100k ops and differing by 1k
// transfer ≤ 2× the bytes of the 1k ops). Two real libp2p hosts on 127.0.0.1, each with a
// file-backed ledger; B pulls from A with `/substrate/ledger-sync/1`. The bytes counted are
// every frame both ways (length prefixes included: the pull with B's whole vector, A's ops
// frames and `end`); Noise and Yamux add ~16 bytes per 64 KiB and 12 per frame on top.
//
// The 100k shared ops are the cheapest kind to make (member-genesis, one signature each:
// signing 100k receipts would take minutes here); their kind does not change what a sync
// sends, only the number of authors does (the vector is ~120 bytes per author). The 1k
// difference is measured twice: as receipt ops (what daemons mostly log, ~1 KiB each) and
// as small genesis ops (~250 bytes each, the harder case for the ratio).
//
//   node bench/ledger-sync-bytes.ts [shared=100000] [authors=1000] [difference=1000]

import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cidOf, encodeEnvelope, signEnvelope } from '../src/identity/envelope.ts'
import { generateIdentity, type Identity } from '../src/identity/keys.ts'
import { createLedger } from '../src/ledger/ledger.ts'
import { signOpBytes } from '../src/ledger/ops.ts'
import { silentLogger } from '../src/logger.ts'
import { createLedgerSync } from '../src/mesh/ledger-sync.ts'
import { encodeAnnouncement } from '../src/mesh/ledger-sync-codec.ts'
import { createMeshNode } from '../src/mesh/libp2p-node.ts'
import { openDatabase } from '../src/store/database.ts'
import { loadAverage, machineInfo } from './machine.ts'

const SHARED = Number(process.argv[2] ?? 100_000)
const AUTHORS = Number(process.argv[3] ?? 1000)
const DIFFERENCE = Number(process.argv[4] ?? 1000)
const T0 = Date.now() - 3_600_000
const load = [loadAverage()]

const authors = Array.from({ length: AUTHORS }, () => generateIdentity())
const heads = new Map<Identity, { seq: number; prev: string | null; at: number }>()
const next = (author: Identity, kind: 'member-genesis' | 'receipt', body: object): Uint8Array => {
  const head = heads.get(author) ?? { seq: 0, prev: null, at: T0 }
  const at = head.at + 1
  const bytes = signOpBytes(author, { seq: head.seq + 1, prev: head.prev, kind, body }, { now: at })
  heads.set(author, { seq: head.seq + 1, prev: cidOf(bytes), at })
  return bytes
}
let jobs = 0
const receiptOp = (worker: Identity, requester: Identity): Uint8Array => {
  const at = (heads.get(worker)?.at ?? T0) + 1
  const inner = encodeEnvelope(
    signEnvelope(
      worker,
      'receipt',
      {
        job: `bafyjob${++jobs}`,
        requester: requester.id,
        model: `sha256:${'ab'.repeat(32)}`,
        outputHash: `sha256:${jobs.toString(16).padStart(64, '0')}`,
        promptTokens: 50,
        outputTokens: 200,
        computeMs: 900,
      },
      { now: at },
    ),
  )
  const receipt = encodeEnvelope(
    signEnvelope(requester, 'receipt-countersign', { receipt: inner }, { now: at }),
  )
  return next(worker, 'receipt', { receipt })
}

const dir = mkdtempSync(join(tmpdir(), 'ledger-sync-bytes-'))
const pathA = join(dir, 'a.db')
const pathB = join(dir, 'b.db')

const t = performance.now()
{
  const db = openDatabase(pathA)
  const ledger = createLedger({ db })
  ledger.start()
  let batch: Uint8Array[] = []
  for (let i = 0; i < SHARED; i++) {
    batch.push(next(authors[i % AUTHORS]!, 'member-genesis', {}))
    if (batch.length === 1000 || i === SHARED - 1) {
      const r = ledger.log.ingestMany(batch)
      if (r.added !== batch.length) throw new Error(`setup: ${r.refused[0]?.error.message}`)
      batch = []
    }
  }
  ledger.stop()
  db.close()
}
copyFileSync(pathA, pathB)
const setupMs = performance.now() - t

async function node(path: string) {
  const identity = generateIdentity()
  const db = openDatabase(path)
  const ledger = createLedger({ db })
  ledger.start()
  const mesh = await createMeshNode({ identity, logger: silentLogger })
  const sync = createLedgerSync({ mesh, ledger, logger: silentLogger }, { syncOnConnect: false })
  await mesh.start()
  await sync.start()
  return { db, ledger, mesh, sync }
}
const a = await node(pathA)
const b = await node(pathB)
await b.mesh.dial(a.mesh.multiaddrs()[0]!)

async function measure(kind: 'receipt' | 'member-genesis') {
  const diff: Uint8Array[] = []
  for (let i = 0; i < DIFFERENCE; i++) {
    const author = authors[(i * 13) % AUTHORS]!
    diff.push(
      kind === 'receipt'
        ? receiptOp(author, authors[(i * 13 + 1) % AUTHORS]!)
        : next(author, 'member-genesis', {}),
    )
  }
  const ingested = a.ledger.log.ingestMany(diff)
  if (ingested.added !== DIFFERENCE) throw new Error(`difference: ${ingested.refused[0]?.error.message}`)
  const opBytes = diff.reduce((n, op) => n + op.length, 0)
  const started = performance.now()
  const result = await b.sync.syncWith(a.mesh.peerId)
  const ms = performance.now() - started
  const same =
    JSON.stringify([...a.ledger.log.heads().vector]) === JSON.stringify([...b.ledger.log.heads().vector])
  const transferred = result.bytesIn + result.bytesOut
  return {
    kind,
    differenceOps: DIFFERENCE,
    differenceBytes: opBytes,
    opsSent: result.opsIn,
    added: result.added,
    pullBytes: result.bytesOut,
    answerBytes: result.bytesIn,
    transferredBytes: transferred,
    ratio: Number((transferred / opBytes).toFixed(3)),
    syncMs: Math.round(ms),
    identicalHeads: same,
  }
}

const receipts = await measure('receipt')
load.push(loadAverage())
const small = await measure('member-genesis')
load.push(loadAverage())
// Nothing missing: what an idle sync costs (one vector, one `end`).
const idle = await b.sync.syncWith(a.mesh.peerId)
const summaryBytes = encodeAnnouncement(b.sync.summary()).length

for (const n of [a, b]) {
  await n.sync.stop()
  await n.mesh.stop()
  n.ledger.stop()
  n.db.close()
}
rmSync(dir, { recursive: true, force: true })

console.log(
  JSON.stringify(
    {
      bench: 'ledger-sync-bytes',
      machine: machineInfo(),
      loadAverage: load,
      sharedOps: SHARED,
      authors: AUTHORS,
      setupMs: Math.round(setupMs),
      receipts,
      small,
      idleSyncBytes: idle.bytesIn + idle.bytesOut,
      headsAnnouncementBytes: summaryBytes,
      target: 'ratio ≤ 2',
    },
    null,
    2,
  ),
)
