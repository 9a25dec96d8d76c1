import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { encodeEnvelope, signEnvelope } from '../../src/identity/envelope.ts'
import { generateIdentity } from '../../src/identity/keys.ts'
import { peekEnvelopeTimes } from '../../src/ledger/envelope-times.ts'

const alice = generateIdentity()

test('peeked times equal the decoded ones for any signed envelope', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 2 ** 45 }),
      fc.integer({ min: 1, max: 3_600_000 }),
      fc.string({ maxLength: 200 }),
      (now, ttlMs, text) => {
        const bytes = encodeEnvelope(signEnvelope(alice, 'test', { text }, { now, ttlMs }))
        const decoded = dagCbor.decode(bytes) as { created: number; expires: number }
        assert.deepEqual(peekEnvelopeTimes(bytes), { created: decoded.created, expires: decoded.expires })
      },
    ),
    { numRuns: 200 },
  )
})

test('anything that is not an envelope peeks as undefined, never throws', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      const result = peekEnvelopeTimes(bytes)
      assert.ok(
        result === undefined ||
          (Number.isSafeInteger(result.created) && Number.isSafeInteger(result.expires)),
      )
    }),
    { numRuns: 500 },
  )
  assert.equal(peekEnvelopeTimes(dagCbor.encode({ created: -1, expires: 5 })), undefined)
  assert.equal(peekEnvelopeTimes(new Uint8Array()), undefined)
})
