import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import {
  allBalances,
  applyFork,
  applyOp,
  balanceOf,
  createFoldState,
  DEFAULT_LEDGER_PARAMS,
  type FoldOp,
  foldOps,
  type LedgerParams,
  memberOf,
} from '../../src/ledger/balances.ts'
import { explainBalance } from '../../src/ledger/explain.ts'
import { restoreFoldState, serializeFoldState } from '../../src/ledger/fold-checkpoint.ts'
import { createLedger } from '../../src/ledger/ledger.ts'
import type { LedgerOp, OpDraft } from '../../src/ledger/ops.ts'
import { openDatabase } from '../../src/store/database.ts'
import { insertLedgerOp } from '../../src/store/ledger-table.ts'
import {
  bindingOp,
  chain,
  DAY,
  genesisOp,
  identities,
  makeReceipt,
  receiptOp,
  T0,
  vouchOp,
} from './fixtures.ts'

const [worker, requester, member, other, verifier] = identities(5) as [
  ReturnType<typeof identities>[number],
  ReturnType<typeof identities>[number],
  ReturnType<typeof identities>[number],
  ReturnType<typeof identities>[number],
  ReturnType<typeof identities>[number],
]
const params: LedgerParams = { ...DEFAULT_LEDGER_PARAMS, floorPerDay: 100, capPerCounterpartyPerDay: 500 }
// 100 output + 40 prompt / 4 = 110 credits per default receipt
const CREDITS = 110

describe('balance fold', () => {
  test('the worker earns, the requester spends beyond its floor', () => {
    const ops = chain(requester, [receiptOp(makeReceipt(worker, requester))])
    const state = foldOps(ops, [], params)
    const w = balanceOf(state, worker.id, T0)
    const r = balanceOf(state, requester.id, T0)
    assert.equal(w.earned, CREDITS)
    assert.equal(w.balance, CREDITS)
    assert.equal(r.spent, CREDITS)
    const unvouchedFloor = 25 // 25 % of 100
    assert.equal(r.floorCovered, unvouchedFloor)
    assert.equal(r.balance, -(CREDITS - unvouchedFloor))
    assert.equal(r.floorLeftToday, 0)
  })

  test('a receipt logged by both worker and requester counts once', () => {
    const bytes = makeReceipt(worker, requester)
    const ops = [...chain(worker, [receiptOp(bytes)]), ...chain(requester, [receiptOp(bytes)])]
    assert.equal(balanceOf(foldOps(ops, [], params), worker.id).earned, CREDITS)
  })

  test('receipts between two nodes of one member mint nothing and cost nothing', () => {
    const ops = [
      ...chain(member, [genesisOp(), bindingOp(worker, member), bindingOp(requester, member)]),
      ...chain(worker, [receiptOp(makeReceipt(worker, requester))]),
    ]
    const state = foldOps(ops, [], params)
    assert.equal(memberOf(state, worker.id), member.id)
    const b = balanceOf(state, member.id, T0)
    assert.equal(b.earned, 0)
    assert.equal(b.spent, 0)
    assert.equal(explainBalance(state, member.id, T0).excluded[0]?.reason, 'same-member')
  })

  test('earning from one counterparty is capped per day, not across days', () => {
    const receipts = [0, 1, 2, 3, 4, 5].map((i) => makeReceipt(worker, requester, { at: T0 + i }))
    const dayOne = chain(worker, receipts.map(receiptOp), { at: T0 + 10 })
    const nextDay = makeReceipt(worker, requester, { at: T0 + DAY })
    const dayTwo = chain(worker, [receiptOp(nextDay)], { after: dayOne.at(-1)!, at: T0 + DAY })
    const state = foldOps([...dayOne, ...dayTwo], [], params)
    const b = balanceOf(state, worker.id)
    assert.equal(b.earned, 500 + CREDITS, 'six receipts on day one hit the 500 cap; day two counts')
    assert.equal(balanceOf(state, requester.id).spent, 7 * CREDITS, 'the requester pays for all of it')
    const lines = explainBalance(state, worker.id).earnings
    assert.deepEqual(
      lines.map((l) => [l.gross, l.earned, l.receipts.length]),
      [
        [6 * CREDITS, 500, 6],
        [CREDITS, CREDITS, 1],
      ],
    )
  })

  test('a vouched member gets the full floor', () => {
    const ops = [
      ...chain(member, [genesisOp(), bindingOp(requester, member)]),
      ...chain(other, [genesisOp(), vouchOp(member)]),
      ...chain(requester, [receiptOp(makeReceipt(worker, requester, { outputTokens: 50, promptTokens: 0 }))]),
    ]
    const b = balanceOf(foldOps(ops, [], params), member.id, T0)
    assert.equal(b.vouched, true)
    assert.equal(b.floorPerDay, 100)
    assert.equal(b.balance, 0, 'a 50-credit job is inside the floor')
    assert.equal(b.floorLeftToday, 50)
  })

  test('a frozen worker earns nothing and its requester pays nothing', () => {
    const ops = chain(requester, [receiptOp(makeReceipt(worker, requester))])
    const state = foldOps(ops, [worker.id], params)
    assert.equal(balanceOf(state, worker.id).earned, 0)
    assert.equal(balanceOf(state, requester.id).spent, 0)
  })

  test('a frozen author’s logs stop counting, but a copy in an honest log still does', () => {
    const bytes = makeReceipt(worker, requester)
    const onlyFrozen = foldOps(chain(requester, [receiptOp(bytes)]), [requester.id], params)
    assert.equal(balanceOf(onlyFrozen, worker.id).earned, 0)
    const both = foldOps(
      [...chain(requester, [receiptOp(bytes)]), ...chain(worker, [receiptOp(bytes)])],
      [requester.id],
      params,
    )
    assert.equal(balanceOf(both, worker.id).earned, CREDITS)
  })

  test('a fraud proof from a vouched member voids the worker’s receipts', () => {
    const bytes = makeReceipt(worker, requester)
    const accuse: OpDraft = { kind: 'fraud-proof', body: { receipt: bytes, evidence: [] } }
    const ops: LedgerOp[] = [...chain(worker, [receiptOp(bytes)]), ...chain(verifier, [genesisOp(), accuse])]
    const unvouched = foldOps(ops, [], params)
    assert.equal(balanceOf(unvouched, worker.id).earned, CREDITS, 'a fresh key cannot void a rival')
    const vouched = foldOps([...ops, ...chain(other, [genesisOp(), vouchOp(verifier)])], [], params)
    assert.equal(balanceOf(vouched, worker.id).earned, 0)
    assert.equal(explainBalance(vouched, worker.id).excluded[0]?.reason, 'void-worker')
  })

  test('incremental folding equals the cold fold, through a checkpoint', () => {
    const ops = [
      ...chain(member, [genesisOp(), bindingOp(worker, member)]),
      ...chain(
        worker,
        [0, 1, 2].map((i) => receiptOp(makeReceipt(worker, requester, { at: T0 + i }))),
      ),
      ...chain(other, [genesisOp(), vouchOp(member)]),
      ...chain(requester, [receiptOp(makeReceipt(worker, requester, { at: T0 + 5 }))]),
    ]
    const cold = foldOps(ops, [other.id], params)
    const warm = createFoldState(params)
    for (const op of ops.slice(0, 4)) applyOp(warm, op)
    allBalances(warm) // derive aggregates mid-way, so later receipts take the O(1) path
    const restored = restoreFoldState(serializeFoldState(warm), params)
    for (const op of ops.slice(4)) applyOp(restored, op)
    applyFork(restored, other.id)
    assert.deepEqual(allBalances(restored, T0), allBalances(cold, T0))
  })
})

describe('createLedger', () => {
  test('balances survive a restart and fold only the new ops after the checkpoint', () => {
    const db = openDatabase(':memory:')
    const now = () => T0 + 60_000
    const ledger = createLedger({ db }, { now, params, checkpointEvery: 2 })
    ledger.start()
    ledger.append(requester, receiptOp(makeReceipt(worker, requester)))
    ledger.append(requester, receiptOp(makeReceipt(worker, requester, { at: T0 + 1 })))
    ledger.append(requester, receiptOp(makeReceipt(worker, requester, { at: T0 + 2 })))
    const before = ledger.balances()
    ledger.stop()
    const again = createLedger({ db }, { now, params })
    again.start()
    assert.deepEqual(again.balances(), before)
    assert.equal(again.standingOf(worker.id).balance, 3 * CREDITS)
    assert.equal(again.standingOf(requester.id).floorLeftToday, 0)
    db.close()
  })

  test('a restart without a checkpoint folds every page of stored facts, in arrival order', () => {
    // More rows than the reader's page (1000), with a binding arriving after the receipts it
    // moves and receipts logged twice, written as ingest stores them (facts beside the bytes).
    const db = openDatabase(':memory:')
    const nodes = [worker.id, requester.id, other.id, verifier.id]
    const ops: FoldOp[] = [{ cid: 'genesis', author: member.id, at: T0, facts: { kind: 'member-genesis' } }]
    for (let i = 0; i < 2_100; i++) {
      const facts = {
        kind: 'receipt' as const,
        receipt: `receipt-${i % 1_900}`,
        worker: nodes[i % 4]!,
        requester: nodes[(i + 1 + (i % 3)) % 4]!,
        promptTokens: i % 97,
        outputTokens: i % 89,
        created: T0 + i * (DAY / 300),
      }
      ops.push({
        cid: `op-${i}`,
        author: i < 1_900 ? facts.requester : facts.worker,
        at: facts.created,
        facts,
      })
    }
    ops.push({
      cid: 'bind',
      author: member.id,
      at: T0 + DAY,
      facts: { kind: 'node-binding', node: other.id },
    })
    const seqs = new Map<string, number>()
    db.transaction(() => {
      for (const op of ops) {
        const seq = (seqs.get(op.author) ?? 0) + 1
        seqs.set(op.author, seq)
        const { cid, author, at, facts } = op
        insertLedgerOp(db, {
          cid,
          author,
          seq,
          kind: facts.kind,
          at,
          facts: JSON.stringify(facts),
          bytes: new Uint8Array(1),
        })
      }
    })
    const now = () => T0 + 8 * DAY
    const ledger = createLedger({ db }, { now, params, checkpointName: 'never-saved' })
    ledger.start()
    const expected = allBalances(foldOps(ops, [], params), now())
    assert.equal(expected.length, 4)
    assert.deepEqual(ledger.balances(), expected)
    assert.equal(ledger.state.receipts.size, 1_900)
    db.close()
  })
})
