import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { generateIdentity } from '../../src/identity/keys.ts'
import { createLedger } from '../../src/ledger/ledger.ts'
import { ensureMembership } from '../../src/ledger/membership.ts'
import { receiptsLoggedBy } from '../../src/ledger/receipt-history.ts'
import { openDatabase } from '../../src/store/database.ts'
import { makeReceipt } from './fixtures.ts'

describe('ensureMembership', () => {
  test('a node that is its own member appends genesis and binding once, and they survive a restart', () => {
    const node = generateIdentity()
    const db = openDatabase(':memory:')
    const ledger = createLedger({ db })
    ledger.start()
    const first = ensureMembership(ledger, { member: node, node })
    assert.deepEqual(first.appended, ['member-genesis', 'node-binding'])
    assert.equal(ledger.memberOf(node.id), node.id)
    assert.equal(ledger.log.heads().vector.get(node.id)?.seq, 2)
    ledger.stop()

    const again = createLedger({ db })
    again.start()
    assert.deepEqual(ensureMembership(again, { member: node, node }).appended, [])
    assert.equal(again.log.heads().vector.get(node.id)?.seq, 2)
  })

  test('one member key binds two nodes, and their receipts between each other mint nothing', () => {
    const [member, a, b, stranger] = [
      generateIdentity(),
      generateIdentity(),
      generateIdentity(),
      generateIdentity(),
    ]
    const ledger = createLedger({ db: openDatabase(':memory:') })
    ledger.start()
    assert.deepEqual(ensureMembership(ledger, { member, node: a }).appended, [
      'member-genesis',
      'node-binding',
    ])
    assert.deepEqual(ensureMembership(ledger, { member, node: b }).appended, ['node-binding'])
    assert.equal(ledger.memberOf(a.id), member.id)
    assert.equal(ledger.memberOf(b.id), member.id)

    const now = Date.now()
    ledger.append(a, { kind: 'receipt', body: { receipt: makeReceipt(a, b, { at: now, outputTokens: 50 }) } })
    assert.equal(ledger.balanceOf(member.id).earned, 0)
    assert.equal(ledger.explain(member.id).excluded[0]?.reason, 'same-member')
    ledger.append(a, {
      kind: 'receipt',
      body: { receipt: makeReceipt(a, stranger, { at: now, outputTokens: 50, promptTokens: 0 }) },
    })
    assert.equal(ledger.balanceOf(member.id).earned, 50)
    assert.equal(ledger.balanceOf(stranger.id).spent, 50)
  })
})

describe('receiptsLoggedBy', () => {
  test('lists the receipts of one log newest first, skipping other ops, up to the limit', () => {
    const [worker, requester] = [generateIdentity(), generateIdentity()]
    const db = openDatabase(':memory:')
    const ledger = createLedger({ db })
    ledger.start()
    ensureMembership(ledger, { member: worker, node: worker })
    const now = Date.now()
    const bytes = [1, 2, 3].map((n) => makeReceipt(worker, requester, { at: now, outputTokens: n }))
    for (const receipt of bytes) ledger.append(worker, { kind: 'receipt', body: { receipt } })
    const all = receiptsLoggedBy(db, worker.id, 10)
    assert.deepEqual(
      all.map((r) => r.receipt.receipt.outputTokens),
      [3, 2, 1],
    )
    assert.equal(all[0]?.receipt.worker, worker.id)
    assert.deepEqual(
      receiptsLoggedBy(db, worker.id, 2).map((r) => r.receipt.receipt.outputTokens),
      [3, 2],
    )
    assert.deepEqual(receiptsLoggedBy(db, requester.id, 10), [])
  })
})
