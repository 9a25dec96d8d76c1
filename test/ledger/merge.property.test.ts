// The CRDT laws, with real signed ops and real SQLite: merge (sync until nothing is left
// to send) is commutative, associative and idempotent; every delivery order of the same
// ops gives the same balances, incrementally and cold; a fork is found whatever the order.

import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import fc from 'fast-check'
import {
  allBalances,
  applyOp,
  createFoldState,
  DEFAULT_LEDGER_PARAMS,
  foldOps,
  type LedgerParams,
} from '../../src/ledger/balances.ts'
import { createLedger, type Ledger } from '../../src/ledger/ledger.ts'
import type { LedgerLog } from '../../src/ledger/log.ts'
import type { LedgerOp } from '../../src/ledger/ops.ts'
import { diff, emptyHeads, headsToJSON, planSize } from '../../src/ledger/vector.ts'
import { type Db, openDatabase } from '../../src/store/database.ts'
import {
  bindingOp,
  chain,
  DAY,
  deliver,
  genesisOp,
  identities,
  makeReceipt,
  receiptOp,
  T0,
  vouchOp,
} from './fixtures.ts'

const params: LedgerParams = { ...DEFAULT_LEDGER_PARAMS, floorPerDay: 100, capPerCounterpartyPerDay: 150 }
const now = () => T0 + DAY
const LOGGED = T0 + 1000
const ids = identities(7)
const who = { m: ids[0]!, o: ids[1]!, w1: ids[2]!, w2: ids[3]!, r1: ids[4]!, r2: ids[5]!, eq: ids[6]! }

const rW2R1a = makeReceipt(who.w2, who.r1, { at: T0 })
const rW2R1b = makeReceipt(who.w2, who.r1, { at: T0 + 1 })
const rW1R2 = makeReceipt(who.w1, who.r2, { at: T0 + 2 })
const rEqR1 = makeReceipt(who.eq, who.r1, { at: T0 + 3 })
const rEqR2 = makeReceipt(who.eq, who.r2, { at: T0 + 4 })
const rW1R1 = makeReceipt(who.w1, who.r1, { at: T0 + 5, outputTokens: 30 })

const eqA = chain(who.eq, [genesisOp(), receiptOp(rEqR1), vouchOp(who.m)], { at: LOGGED })
const eqB = chain(who.eq, [receiptOp(rEqR2), genesisOp()], { after: eqA[0]!, at: LOGGED + 50 })

const honest: LedgerOp[] = [
  ...chain(who.m, [genesisOp(), bindingOp(who.w1, who.m, LOGGED), bindingOp(who.r2, who.m, LOGGED)], {
    at: LOGGED,
  }),
  ...chain(who.o, [genesisOp(), vouchOp(who.m)], { at: LOGGED }),
  ...chain(who.r1, [receiptOp(rW2R1a), receiptOp(rW2R1b), receiptOp(rEqR1), receiptOp(rW1R1)], {
    at: LOGGED,
  }),
  ...chain(who.w2, [receiptOp(rW2R1b)], { at: LOGGED }),
  ...chain(who.r2, [genesisOp(), receiptOp(rW1R2), receiptOp(rEqR2)], { at: LOGGED }),
]
const pool = [...honest, ...eqA, ...eqB].map((op) => op.bytes)

interface Replica {
  ledger: Ledger
  db: Db
}

function replica(ops: readonly Uint8Array[]): Replica {
  const db = openDatabase(':memory:')
  const ledger = createLedger({ db }, { now, params })
  ledger.start()
  deliver(ledger.log, ops)
  return { ledger, db }
}

/** Pulls from `from` into `into` until a round changes nothing. */
function pull(into: LedgerLog, from: LedgerLog): void {
  for (let round = 0; round < 5; round++) {
    const before = JSON.stringify(headsToJSON(into.heads()))
    const plan = diff(from.heads(), into.heads())
    if (planSize(plan) === 0) return
    const batch = from.opsFor(plan)
    for (const proof of batch.forkProofs) into.ingestForkProof(proof)
    deliver(into, batch.ops)
    if (JSON.stringify(headsToJSON(into.heads())) === before) return
  }
}

function merged(...parts: Replica[]): Replica {
  const out = replica([])
  for (const p of parts) pull(out.ledger.log, p.ledger.log)
  return out
}

/** What must agree between replicas: the ops that count, the frozen authors, the balances. */
function observable(r: Replica) {
  const log = r.ledger.log
  const ops = log.opsFor(diff(log.heads(), emptyHeads())).ops.map((b) => Buffer.from(b).toString('base64'))
  return {
    ops: ops.sort(),
    frozen: [...log.heads().frozen].sort(),
    balances: allBalances(r.ledger.state, T0),
  }
}

const subset = fc.subarray(pool)
const runs = { numRuns: 40 }

describe('ledger merge laws (fast-check)', () => {
  test('merge is commutative', () => {
    fc.assert(
      fc.property(subset, subset, (a, b) => {
        const [ra, rb] = [replica(a), replica(b)]
        assert.deepEqual(observable(merged(ra, rb)), observable(merged(rb, ra)))
      }),
      runs,
    )
  })

  test('merge is associative', () => {
    fc.assert(
      fc.property(subset, subset, subset, (a, b, c) => {
        const [ra, rb, rc] = [replica(a), replica(b), replica(c)]
        assert.deepEqual(observable(merged(merged(ra, rb), rc)), observable(merged(ra, merged(rb, rc))))
      }),
      runs,
    )
  })

  test('merge is idempotent', () => {
    fc.assert(
      fc.property(subset, (a) => {
        const ra = replica(a)
        assert.deepEqual(observable(merged(ra, ra)), observable(merged(ra)))
        assert.deepEqual(observable(merged(ra)), observable(ra))
      }),
      runs,
    )
  })

  test('every delivery order gives the same balances, incrementally and cold', () => {
    const reference = observable(replica(pool))
    assert.equal(reference.frozen.length, 1)
    assert.ok(reference.balances.some((b) => b.earned > 0 && b.earned < b.spent + 1000))
    assert.ok(reference.balances.length >= 3, 'the pool moves credits between several members')
    fc.assert(
      fc.property(fc.shuffledSubarray(pool, { minLength: pool.length }), (order) => {
        const r = replica(order)
        assert.deepEqual(observable(r), reference)
        const cold = createLedger({ db: r.db }, { now, params, checkpointName: 'cold' })
        cold.start()
        assert.deepEqual(allBalances(cold.state, T0), reference.balances)
        r.db.close()
      }),
      runs,
    )
  })

  test('folding op by op, reading after each, equals the cold fold in every order', () => {
    const fraud = chain(who.r2, [{ kind: 'fraud-proof', body: { receipt: rW2R1a, evidence: [] } }], {
      after: honest.findLast((op) => op.author === who.r2.id),
      at: LOGGED + 100,
    })
    // r2 (a member by genesis) is vouched by o, so its proof counts whichever comes first.
    const vouch = chain(who.o, [vouchOp(who.r2)], {
      after: honest.findLast((op) => op.author === who.o.id),
      at: LOGGED + 100,
    })
    const ops = [...honest, ...fraud, ...vouch]
    const cold = allBalances(foldOps(ops, [], params), T0)
    assert.ok(!cold.some((b) => b.member === who.w2.id), 'the proven worker w2 earns nothing')
    fc.assert(
      fc.property(fc.shuffledSubarray(ops, { minLength: ops.length }), (order) => {
        const state = createFoldState(params)
        for (const op of order) {
          applyOp(state, op)
          allBalances(state, T0) // keeps the aggregates live, so every op takes the incremental path
        }
        assert.deepEqual(allBalances(state, T0), cold)
      }),
      { numRuns: 200 },
    )
  })

  test('a fork is detected whatever the order it arrives in', () => {
    fc.assert(
      fc.property(fc.shuffledSubarray(pool, { minLength: pool.length }), (order) => {
        const r = replica(order)
        assert.deepEqual([...r.ledger.log.heads().frozen], [who.eq.id])
      }),
      runs,
    )
  })
})
