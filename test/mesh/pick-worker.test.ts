import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import type { CapacityEntry } from '../../src/mesh/capacity-gossip.ts'
import { pickWorkers } from '../../src/mesh/pick-worker.ts'
import { createWorkerStanding } from '../../src/mesh/worker-standing.ts'
import { MODEL_DIGEST, OTHER_DIGEST } from './helpers.ts'

const entry = (peer: string, over: Partial<CapacityEntry['record']> = {}): CapacityEntry => ({
  peer,
  lastSeen: 0,
  expires: 0,
  record: {
    models: [{ digest: MODEL_DIGEST, name: 'm' }],
    loaded: [],
    freeSlots: 1,
    tokensPerSecond: 100,
    queueDepth: 0,
    at: 0,
    ...over,
  },
})

describe('pickWorkers', () => {
  test('only peers holding the model with a free slot are candidates', () => {
    const view = [
      entry('holder'),
      entry('full', { freeSlots: 0 }),
      entry('other', { models: [{ digest: OTHER_DIGEST, name: 'o' }] }),
    ]
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST), ['holder'])
  })

  test('loaded beats held, then latency, then tokens per second', () => {
    const view = [
      entry('slow-far', { tokensPerSecond: 10 }),
      entry('fast-far', { tokensPerSecond: 900 }),
      entry('near', { tokensPerSecond: 10 }),
      entry('loaded', { loaded: [MODEL_DIGEST], tokensPerSecond: 1 }),
    ]
    const latencyMs = (peer: string) => (peer === 'near' ? 1 : undefined)
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, { latencyMs }), [
      'loaded',
      'near',
      'fast-far',
      'slow-far',
    ])
  })

  test('excluded peers are skipped', () => {
    const view = [entry('a'), entry('b')]
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, { exclude: new Set(['a']) }), ['b'])
  })

  test('a peer gets no more of our jobs than the free slots it advertised, nor more than the cap', () => {
    let now = 1_000
    const standing = createWorkerStanding({ maxInFlightPerPeer: 2, now: () => now })
    const options = { inFlight: standing.inFlight, maxInFlightPerPeer: 2 }
    // Two free slots in a record we got at t = 1000.
    const view = [{ ...entry('a', { freeSlots: 2 }), lastSeen: 1_000 }]
    const first = standing.begin('a')
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, options), ['a'])
    standing.begin('a')
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, options), [], 'both advertised slots are ours now')
    // A newer record that already counts our two jobs (say it has 3 left) does not count them twice,
    // but our cap of 2 still holds…
    now = 2_000
    const newer = [{ ...entry('a', { freeSlots: 3 }), lastSeen: 2_000 }]
    assert.deepEqual(pickWorkers(newer, MODEL_DIGEST, options), [])
    // …until one of ours ends.
    first()
    assert.deepEqual(pickWorkers(newer, MODEL_DIGEST, options), ['a'])
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, { ...options, includeFull: true }), ['a'])
  })

  test('a peer that timed out ranks after every peer in good standing, and recovers with time or success', () => {
    let now = 0
    const standing = createWorkerStanding({ penaltyHalfLifeMs: 10_000, now: () => now })
    const options = { penalty: standing.penalty }
    const view = [entry('loaded', { loaded: [MODEL_DIGEST] }), entry('held')]
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, options), ['loaded', 'held'])
    standing.record('loaded', 'timeout')
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, options), ['held', 'loaded'], 'stalled: demoted')
    now = 40_000 // four half-lives: 4 → 0.25
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, options), ['loaded', 'held'], 'forgiven in time')
    standing.record('loaded', 'gone')
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, options), ['held', 'loaded'])
    standing.record('loaded', 'success')
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, options), ['loaded', 'held'], 'a success restores it')
    assert.deepEqual(
      { successes: standing.standing('loaded').successes, failures: standing.standing('loaded').failures },
      { successes: 1, failures: 2 },
    )
  })

  test('among peers in bad standing the cleaner record goes first', () => {
    const standing = createWorkerStanding()
    standing.record('a', 'failed')
    standing.record('b', 'busy')
    const view = [entry('a'), entry('b')]
    assert.deepEqual(pickWorkers(view, MODEL_DIGEST, { penalty: standing.penalty }), ['b', 'a'])
  })
})
