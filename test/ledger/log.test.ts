import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { encodeEnvelope, signEnvelope } from '../../src/identity/envelope.ts'
import { generateIdentity } from '../../src/identity/keys.ts'
import { isLedgerError, type LedgerRefusal } from '../../src/ledger/ledger-error.ts'
import { MAX_BATCH_OPS } from '../../src/ledger/log.ts'
import { decodeOp, signOp } from '../../src/ledger/ops.ts'
import { diff, emptyHeads, planSize } from '../../src/ledger/vector.ts'
import { countersignReceipt, signReceipt } from '../../src/mesh/job-records.ts'
import { recordTypes } from '../../src/protocol/domains.ts'
import {
  bindingOp,
  chain,
  DAY,
  digest,
  genesisOp,
  makeReceipt,
  openLog,
  rawFirstOp,
  receiptOp,
  T0,
} from './fixtures.ts'

const worker = generateIdentity()
const requester = generateIdentity()
const stranger = generateIdentity()

const refused = (reason: LedgerRefusal) => (err: unknown) => {
  assert.ok(isLedgerError(err), `expected a LedgerError, got ${String(err)}`)
  assert.equal(err.reason, reason, err.message)
  return true
}

describe('ledger log ingest', () => {
  test('a valid chain is added op by op and the head moves', () => {
    const { log } = openLog()
    const ops = chain(worker, [genesisOp(), receiptOp(makeReceipt(worker, requester))])
    for (const op of ops) assert.equal(log.ingest(op.bytes).status, 'added')
    assert.deepEqual(log.heads().vector.get(worker.id), { seq: 2, head: ops[1]!.cid })
  })

  test('an op whose signature does not verify is refused as forged', () => {
    const { log } = openLog()
    const [op] = chain(worker, [genesisOp()])
    const fields = dagCbor.decode(op!.bytes) as Record<string, unknown>
    fields.signer = stranger.id // claims another author, keeps the worker's signature
    assert.throws(() => log.ingest(dagCbor.encode(fields)), refused('forged'))
    assert.equal(log.heads().vector.size, 0)
  })

  test('an op that links to the wrong prev is refused as a broken chain', () => {
    const { log } = openLog()
    const [first] = chain(worker, [genesisOp()])
    log.ingest(first!.bytes)
    const bad = signOp(worker, { ...genesisOp(), seq: 2, prev: 'bafynotthehead' }, { now: T0 })
    assert.throws(() => log.ingest(bad.bytes), refused('chain'))
  })

  test('an op dated before its predecessor is refused', () => {
    const { log } = openLog()
    const [first] = chain(worker, [genesisOp()], { at: T0 })
    log.ingest(first!.bytes)
    const back = signOp(worker, { ...genesisOp(), seq: 2, prev: first!.cid }, { now: T0 - 1000 })
    assert.throws(() => log.ingest(back.bytes), refused('chain'))
  })

  test('an op that arrives before its predecessors is refused with what is missing', () => {
    const { log } = openLog()
    const ops = chain(worker, [genesisOp(), genesisOp(), genesisOp(), genesisOp()])
    log.ingest(ops[0]!.bytes)
    assert.throws(
      () => log.ingest(ops[3]!.bytes),
      (err: unknown) =>
        refused('gap')(err) &&
        isLedgerError(err) &&
        assert.deepEqual(err.missing, { author: worker.id, from: 2, to: 3 }) === undefined,
    )
    for (const op of ops.slice(1)) log.ingest(op.bytes)
    assert.equal(log.heads().vector.get(worker.id)?.seq, 4)
  })

  test('a second op with the same author and seq is a fork proof that freezes the author', () => {
    const { log } = openLog()
    const [a1, a2] = chain(worker, [genesisOp(), genesisOp()])
    const [b2] = chain(worker, [receiptOp(makeReceipt(worker, requester))], { after: a1 })
    log.ingest(a1!.bytes)
    log.ingest(a2!.bytes)
    assert.deepEqual(log.ingest(b2!.bytes), { status: 'fork', author: worker.id, seq: 2 })
    assert.ok(log.isFrozen(worker.id))
    assert.equal(log.forkProofs().length, 1)
    const [a3] = chain(worker, [genesisOp()], { after: a2 })
    assert.throws(() => log.ingest(a3!.bytes), refused('frozen'))
    assert.equal(log.ingest(b2!.bytes).status, 'duplicate', 'the proof op again is a no-op')
  })

  test('a fork proof alone freezes the author on a node that holds none of its ops', () => {
    const { log } = openLog()
    const [a1] = chain(worker, [genesisOp()])
    const [b1] = chain(worker, [{ kind: 'member-genesis', body: { name: 'other' } }])
    assert.equal(log.ingestForkProof({ first: a1!.bytes, second: b1!.bytes }), true)
    assert.ok(log.isFrozen(worker.id))
    assert.throws(() => log.ingestForkProof({ first: a1!.bytes, second: a1!.bytes }), refused('malformed'))
  })

  test('an op from the far future is refused; within the clock-skew bound it is accepted', () => {
    const now = T0
    const { log } = openLog(() => now)
    const skew = recordTypes['ledger-op'].maxSkewMs
    const [far] = chain(worker, [genesisOp()], { at: now + 10 * 60_000 })
    assert.throws(() => log.ingest(far!.bytes), refused('future'))
    const [near] = chain(worker, [genesisOp()], { at: now + skew - 1000 })
    assert.equal(log.ingest(near!.bytes).status, 'added')
  })

  test('a replayed op is a no-op, and an op signed long ago still verifies', () => {
    const { log } = openLog(() => T0 + 400 * DAY)
    const [op] = chain(worker, [receiptOp(makeReceipt(worker, requester))])
    assert.equal(log.ingest(op!.bytes).status, 'added')
    assert.equal(log.ingest(op!.bytes).status, 'duplicate')
    assert.equal(log.heads().vector.get(worker.id)?.seq, 1)
  })

  test('an oversize op is refused before it is decoded', () => {
    const { log } = openLog()
    const huge = new Uint8Array(recordTypes['ledger-op'].maxBytes + 1)
    assert.throws(() => log.ingest(huge), refused('oversize'))
    assert.throws(() => decodeOp(huge), refused('oversize'))
  })

  test('an oversize batch is refused whole before any op is checked', () => {
    const { log } = openLog()
    const [op] = chain(worker, [genesisOp()])
    const batch = Array.from({ length: MAX_BATCH_OPS + 1 }, () => op!.bytes)
    assert.throws(() => log.ingestMany(batch), refused('oversize'))
    assert.equal(log.heads().vector.size, 0)
    assert.equal(log.ingestMany(batch.slice(0, MAX_BATCH_OPS)).duplicates, MAX_BATCH_OPS - 1)
  })

  test('a worker that inflates the token counts of a countersigned receipt is refused', () => {
    const { log } = openLog()
    const honest = makeReceipt(worker, requester, { outputTokens: 100 })
    const outer = dagCbor.decode(honest) as { payload: { receipt: Uint8Array } }
    const inner = dagCbor.decode(outer.payload.receipt) as { payload: { outputTokens: number } }
    inner.payload.outputTokens = 100_000
    outer.payload.receipt = dagCbor.encode(inner)
    const inflated = dagCbor.encode(outer)
    assert.throws(() => log.ingest(rawFirstOp(worker, receiptOp(inflated))), refused('receipt'))
  })

  test('a receipt the worker signed alone (no countersignature) is refused', () => {
    const { log } = openLog()
    const inner = encodeEnvelope(
      signEnvelope(
        worker,
        'receipt',
        {
          job: 'bafyjob',
          requester: requester.id,
          model: digest('m'),
          outputHash: digest('o'),
          promptTokens: 1,
          outputTokens: 1,
          computeMs: 1,
        },
        { now: T0 },
      ),
    )
    assert.throws(() => log.ingest(rawFirstOp(worker, receiptOp(inner))), refused('receipt'))
  })

  test('a receipt made by the mesh functions is accepted as it is', () => {
    const { log } = openLog(() => Date.now())
    const bytes = countersignReceipt(
      requester,
      signReceipt(worker, {
        job: 'bafyjob',
        requester: requester.id,
        model: digest('m'),
        outputHash: digest('o'),
        promptTokens: 5,
        outputTokens: 7,
        computeMs: 9,
      }),
    )
    const op = log.append(requester, receiptOp(bytes))
    assert.equal(op.facts.kind, 'receipt')
  })

  test('a receipt verified once is re-checked only for its time window when logged again', () => {
    const { log } = openLog(() => T0 + 400 * DAY)
    const bytes = makeReceipt(worker, requester, { at: T0 })
    assert.equal(log.ingest(chain(requester, [receiptOp(bytes)], { at: T0 + 5 })[0]!.bytes).status, 'added')
    assert.equal(log.ingest(chain(worker, [receiptOp(bytes)], { at: T0 + 9 })[0]!.bytes).status, 'added')
    // The same receipt logged again long after it expired: refused, from the cache too.
    const late = rawFirstOp(worker, receiptOp(bytes), T0 + 2 * DAY)
    assert.throws(() => log.ingest(late), refused('receipt'))
  })

  test('only the worker or the requester may log a receipt', () => {
    const { log } = openLog()
    const op = rawFirstOp(stranger, receiptOp(makeReceipt(worker, requester)))
    assert.throws(() => log.ingest(op), refused('receipt'))
  })

  test('a node binding without the node’s consent for this member is refused', () => {
    const { log } = openLog()
    const member = generateIdentity()
    const [ok] = chain(member, [bindingOp(worker, member)])
    assert.equal(log.ingest(ok!.bytes).status, 'added')
    const stolen = rawFirstOp(stranger, bindingOp(worker, member))
    assert.throws(() => log.ingest(stolen), refused('binding'))
  })
})

describe('ledger sync plan', () => {
  test('a peer is sent exactly the ops it lacks', () => {
    const a = openLog()
    const b = openLog()
    const ops = chain(
      worker,
      Array.from({ length: 10 }, () => genesisOp()),
    )
    for (const op of ops) a.log.ingest(op.bytes)
    for (const op of ops.slice(0, 7)) b.log.ingest(op.bytes)
    const plan = diff(a.log.heads(), b.log.heads())
    assert.equal(planSize(plan), 4, 'three ops plus one probe of the shared head')
    const batch = a.log.opsFor(plan)
    assert.equal(batch.ops.length, 3, 'the probe matches, so only the missing ops go')
    assert.equal(b.log.ingestMany(batch.ops).added, 3)
    assert.equal(planSize(diff(a.log.heads(), b.log.heads())), 0)
    assert.equal(planSize(diff(a.log.heads(), emptyHeads())), 10)
  })

  test('a peer announcing stale heads is sent ops it has, which change nothing there', () => {
    const a = openLog()
    const b = openLog()
    const ops = chain(
      worker,
      Array.from({ length: 10 }, () => genesisOp()),
    )
    for (const op of ops.slice(0, 5)) b.log.ingest(op.bytes)
    const stale = b.log.heads()
    for (const op of ops) a.log.ingest(op.bytes)
    for (const op of ops.slice(5)) b.log.ingest(op.bytes)
    const summary = b.log.ingestMany(a.log.opsFor(diff(a.log.heads(), stale)).ops)
    assert.deepEqual([summary.added, summary.duplicates, summary.refused.length], [0, 5, 0])
  })

  test('an op from a clock running ahead is refused until ours catches up', () => {
    let now = T0
    const { log } = openLog(() => now)
    const [op] = chain(worker, [genesisOp()], { at: T0 + 45_000 })
    assert.throws(() => log.ingest(op!.bytes), refused('future'))
    now = T0 + 20_000 // within the 30 s skew bound of the op's time
    assert.equal(log.ingest(op!.bytes).status, 'added')
  })

  test('two branches of one author at the same seq are found by their head CIDs', () => {
    const a = openLog()
    const b = openLog()
    const [x1] = chain(worker, [genesisOp()])
    const [y1] = chain(worker, [{ kind: 'member-genesis', body: { name: 'y' } }])
    a.log.ingest(x1!.bytes)
    b.log.ingest(y1!.bytes)
    const batch = a.log.opsFor(diff(a.log.heads(), b.log.heads()))
    assert.equal(b.log.ingestMany(batch.ops).forks, 1)
    const back = b.log.opsFor(diff(b.log.heads(), a.log.heads()))
    assert.equal(back.forkProofs.length, 1)
    for (const proof of back.forkProofs) a.log.ingestForkProof(proof)
    assert.ok(a.log.isFrozen(worker.id) && b.log.isFrozen(worker.id))
  })
})
