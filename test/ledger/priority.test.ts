import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import fc from 'fast-check'
import { isFloorLevel, orderQueue, pickAdmissions, type QueuedRequest } from '../../src/ledger/priority.ts'

const request = (id: string, balance: number, enqueuedAt: number, floorLeftToday = 100): QueuedRequest => ({
  id,
  standing: { member: `m-${id}`, balance, floorLeftToday },
  enqueuedAt,
})

describe('priority', () => {
  test('requesters with credits are served by standing, highest first', () => {
    const order = orderQueue([request('a', 10, 1), request('b', 500, 2), request('c', 50, 0)], {
      reservedCommonsShare: 0,
    })
    assert.deepEqual(
      order.map((r) => r.id),
      ['b', 'c', 'a'],
    )
  })

  test('a requester with zero credits is served even behind a long queue of richer ones', () => {
    const rich = Array.from({ length: 20 }, (_, i) => request(`rich${i}`, 1000 + i, i))
    const order = orderQueue([...rich, request('newcomer', 0, 100, 0)], { reservedCommonsShare: 0.25 })
    const position = order.findIndex((r) => r.id === 'newcomer')
    assert.equal(position, 3, 'the first commons turn is the fourth place at a 25 % share')
  })

  test('the reserved share of the order goes to floor-level requesters while they wait', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: -50, max: 1000 }), fc.nat(1000)), { maxLength: 60 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (specs, share) => {
          const queue = specs.map(([balance, at], i) => request(`r${i}`, balance, at))
          const order = orderQueue(queue, { reservedCommonsShare: share })
          assert.equal(order.length, queue.length, 'nobody is dropped')
          const floorTotal = queue.filter((r) => isFloorLevel(r.standing)).length
          let floorSeen = 0
          order.forEach((r, i) => {
            if (isFloorLevel(r.standing)) floorSeen++
            const owed = Math.min(floorTotal, Math.floor((i + 1) * share))
            assert.ok(floorSeen >= owed, `prefix ${i + 1}: ${floorSeen} floor-level, owed ${owed}`)
          })
        },
      ),
      { numRuns: 200 },
    )
  })

  test('among floor-level requesters, those with floor left today go first, then first come', () => {
    const order = orderQueue([request('spent', 0, 1, 0), request('late', -5, 3), request('early', 0, 2)], {
      reservedCommonsShare: 1,
    })
    assert.deepEqual(
      order.map((r) => r.id),
      ['early', 'late', 'spent'],
    )
  })

  test('priority requests never take the slots reserved for the commons', () => {
    const rich = Array.from({ length: 10 }, (_, i) => request(`rich${i}`, 100, i))
    const picked = pickAdmissions(
      rich,
      { slots: 4, running: 0, runningFloor: 0 },
      { reservedCommonsShare: 0.25 },
    )
    assert.equal(picked.length, 3, 'one of four slots stays free for a floor-level requester')
    const withFloor = pickAdmissions(
      [...rich, request('poor', 0, 50)],
      { slots: 4, running: 3, runningFloor: 0 },
      { reservedCommonsShare: 0.25 },
    )
    assert.deepEqual(
      withFloor.map((r) => r.id),
      ['poor'],
    )
  })

  test('floor-level requests may use any free slot', () => {
    const poor = Array.from({ length: 5 }, (_, i) => request(`p${i}`, 0, i))
    const picked = pickAdmissions(
      poor,
      { slots: 4, running: 1, runningFloor: 0 },
      { reservedCommonsShare: 0.25 },
    )
    assert.equal(picked.length, 3)
  })
})
