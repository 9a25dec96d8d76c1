import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import type { CapacityEntry } from '../../src/mesh/capacity-gossip.ts'
import { pickWorkers } from '../../src/mesh/pick-worker.ts'
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
})
