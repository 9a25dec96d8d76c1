import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { z } from 'zod'
import { SubstrateError } from '../../src/errors.ts'
import {
  cidOf,
  createMemoryReplayGuard,
  decodeEnvelope,
  decodeEnvelopeAs,
  type Envelope,
  encodeEnvelope,
  envelopeCid,
  signEnvelope,
} from '../../src/identity/envelope.ts'
import { generateIdentity, type Identity } from '../../src/identity/keys.ts'
import { recordTypes } from '../../src/protocol/domains.ts'

const T0 = 1_750_000_000_000
const SKEW = recordTypes.test.maxSkewMs
const alice = generateIdentity()
const mallory = generateIdentity()

function fails(code: string) {
  return (err: unknown) => {
    assert.ok(err instanceof SubstrateError, `expected a SubstrateError, got ${String(err)}`)
    assert.equal(err.code, code, err.message)
    return true
  }
}

/** Decodes raw envelope bytes into a mutable map, for tests that tamper with fields. */
function fieldsOf(bytes: Uint8Array): Record<string, unknown> {
  return dagCbor.decode(bytes) as Record<string, unknown>
}

/** Signs arbitrary fields the way the protocol does, to build envelopes signEnvelope refuses to make. */
function handSigned(identity: Identity, domain: string, fields: Record<string, unknown>): Uint8Array {
  const { v, type, signer, payload, created, expires, nonce } = fields
  const body = dagCbor.encode({ v, type, signer, payload, created, expires, nonce })
  const sig = identity.sign(Buffer.concat([Buffer.from(domain), Buffer.of(0), body]))
  return dagCbor.encode({ ...fields, sig })
}

const job = { kind: 'infer', model: 'bafy-model', maxTokens: 64, input: 'hello' }
const signed = (payload: unknown = job, type: Envelope['type'] = 'test', now = T0) =>
  encodeEnvelope(signEnvelope(alice, type, payload, { now }))

describe('signed envelopes', () => {
  test('a signed envelope survives encode and decode unchanged', () => {
    const env = signEnvelope(alice, 'job', job, { now: T0, ttlMs: 60_000 })
    const back = decodeEnvelope(encodeEnvelope(env), { type: 'job', now: T0 })
    assert.deepEqual(back, env)
    assert.equal(back.signer, alice.id)
    assert.equal(back.expires, T0 + 60_000)
    assert.equal(back.nonce.length, 16)
  })

  test('two envelopes with the same payload get different nonces and CIDs', () => {
    const a = signEnvelope(alice, 'test', job, { now: T0 })
    const b = signEnvelope(alice, 'test', job, { now: T0 })
    assert.notDeepEqual(a.nonce, b.nonce)
    assert.notEqual(envelopeCid(a), envelopeCid(b))
  })

  test('envelopeCid is the CIDv1 dag-cbor sha2-256 of the encoded bytes', () => {
    const env = signEnvelope(alice, 'test', job, { now: T0 })
    assert.equal(envelopeCid(env), cidOf(encodeEnvelope(env)))
    assert.match(envelopeCid(env), /^bafyrei[a-z2-7]{52}$/)
  })

  test('a flipped bit in the signature is rejected as an invalid signature', () => {
    const fields = fieldsOf(signed())
    const sig = fields.sig as Uint8Array
    sig[5] = sig[5]! ^ 0x01
    assert.throws(
      () => decodeEnvelope(dagCbor.encode(fields), { type: 'test', now: T0 }),
      fails('E_SIGNATURE_INVALID'),
    )
  })

  test('a tampered payload is rejected as an invalid signature', () => {
    const fields = fieldsOf(signed())
    fields.payload = { ...job, maxTokens: 1_000_000 }
    assert.throws(
      () => decodeEnvelope(dagCbor.encode(fields), { type: 'test', now: T0 }),
      fails('E_SIGNATURE_INVALID'),
    )
  })

  test('an envelope relabelled with another signer is rejected as an invalid signature', () => {
    const fields = fieldsOf(signed())
    fields.signer = mallory.id
    assert.throws(
      () => decodeEnvelope(dagCbor.encode(fields), { type: 'test', now: T0 }),
      fails('E_SIGNATURE_INVALID'),
    )
  })

  test('a signer that is not a peer id is rejected as an invalid signature', () => {
    const fields = fieldsOf(signed())
    fields.signer = 'not-a-peer-id'
    assert.throws(
      () => decodeEnvelope(dagCbor.encode(fields), { type: 'test', now: T0 }),
      fails('E_SIGNATURE_INVALID'),
    )
  })

  test('a job envelope presented where a receipt is expected is refused', () => {
    const bytes = signed(job, 'job')
    assert.throws(() => decodeEnvelope(bytes, { type: 'receipt', now: T0 }), fails('E_BAD_REQUEST'))
  })

  test('a job signature relabelled as a receipt does not verify', () => {
    const fields = fieldsOf(signed(job, 'job'))
    fields.type = 'receipt'
    assert.throws(
      () => decodeEnvelope(dagCbor.encode(fields), { type: 'receipt', now: T0 }),
      fails('E_SIGNATURE_INVALID'),
    )
  })

  test('a body signed under the job domain does not verify as a receipt even with type receipt', () => {
    const env = signEnvelope(alice, 'receipt', job, { now: T0 })
    const forged = handSigned(alice, recordTypes.job.domain, { ...env, sig: undefined })
    assert.throws(() => decodeEnvelope(forged, { type: 'receipt', now: T0 }), fails('E_SIGNATURE_INVALID'))
  })

  test('an expired envelope is rejected once the clock skew allowance has passed', () => {
    const env = signEnvelope(alice, 'test', job, { now: T0, ttlMs: 1000 })
    const bytes = encodeEnvelope(env)
    assert.ok(decodeEnvelope(bytes, { type: 'test', now: env.expires + SKEW - 1 }))
    assert.throws(
      () => decodeEnvelope(bytes, { type: 'test', now: env.expires + SKEW }),
      fails('E_RECORD_EXPIRED'),
    )
  })

  test('an envelope dated beyond the clock skew into the future is rejected', () => {
    assert.ok(decodeEnvelope(signed(job, 'test', T0 + SKEW), { type: 'test', now: T0 }))
    assert.throws(
      () => decodeEnvelope(signed(job, 'test', T0 + SKEW + 1), { type: 'test', now: T0 }),
      fails('E_RECORD_FUTURE'),
    )
  })

  test('a validly signed envelope with a lifetime above the type maximum is refused', () => {
    const env = signEnvelope(alice, 'test', job, { now: T0 })
    const fields = { ...env, expires: T0 + recordTypes.test.maxLifetimeMs + 1 }
    const bytes = handSigned(alice, recordTypes.test.domain, fields)
    assert.throws(() => decodeEnvelope(bytes, { type: 'test', now: T0 }), fails('E_BAD_REQUEST'))
  })

  test('the same envelope delivered twice is rejected as a replay', () => {
    const replay = createMemoryReplayGuard()
    const bytes = signed()
    decodeEnvelope(bytes, { type: 'test', now: T0, replay })
    assert.throws(() => decodeEnvelope(bytes, { type: 'test', now: T0, replay }), fails('E_REPLAY'))
    assert.ok(decodeEnvelope(signed(), { type: 'test', now: T0, replay }), 'a fresh nonce is accepted')
  })

  test('oversize bytes are rejected before any decoding', () => {
    // Garbage would fail decoding with E_BAD_REQUEST; E_RECORD_TOO_LARGE shows decoding never began.
    const garbage = randomBytes(recordTypes.test.maxBytes + 1)
    assert.throws(() => decodeEnvelope(garbage, { type: 'test', now: T0 }), fails('E_RECORD_TOO_LARGE'))
    assert.throws(
      () => decodeEnvelope(signed(), { type: 'test', now: T0, maxSize: 16 }),
      fails('E_RECORD_TOO_LARGE'),
    )
  })

  test('signing a payload too large for its type is refused at the source', () => {
    const big = { input: 'x'.repeat(recordTypes.test.maxBytes) }
    assert.throws(() => signEnvelope(alice, 'test', big, { now: T0 }), fails('E_RECORD_TOO_LARGE'))
  })

  test('garbage, empty and truncated bytes are rejected as bad requests', () => {
    const bytes = signed()
    for (const bad of [randomBytes(200), new Uint8Array(0), bytes.subarray(0, bytes.length - 3)]) {
      assert.throws(() => decodeEnvelope(bad, { type: 'test', now: T0 }), fails('E_BAD_REQUEST'))
    }
    assert.throws(
      () => decodeEnvelope(dagCbor.encode([1, 2]), { type: 'test', now: T0 }),
      fails('E_BAD_REQUEST'),
    )
  })

  test('an unknown envelope version is rejected as such', () => {
    const fields = { ...fieldsOf(signed()), v: 2 }
    assert.throws(
      () => decodeEnvelope(dagCbor.encode(fields), { type: 'test', now: T0 }),
      fails('E_UNKNOWN_VERSION'),
    )
  })

  test('an envelope with an extra unsigned field is refused', () => {
    const fields = { ...fieldsOf(signed()), note: 'unsigned' }
    assert.throws(
      () => decodeEnvelope(dagCbor.encode(fields), { type: 'test', now: T0 }),
      fails('E_BAD_REQUEST'),
    )
  })

  test('a non-canonical encoding of a valid envelope is refused', () => {
    // Same map, keys in insertion order instead of DAG-CBOR's canonical order.
    const fields = fieldsOf(signed())
    const keys = Object.keys(fields).reverse()
    const parts = keys.flatMap((k) => [dagCbor.encode(k), dagCbor.encode(fields[k])])
    const bytes = Buffer.concat([Buffer.of(0xa0 + keys.length), ...parts])
    assert.deepEqual(dagCbor.decode(bytes), fields, 'the bytes carry the same data')
    assert.throws(() => decodeEnvelope(bytes, { type: 'test', now: T0 }), fails('E_BAD_REQUEST'))
  })

  test('decodeEnvelopeAs returns the payload typed by the schema and refuses one that does not fit', () => {
    const schema = z.object({ kind: z.literal('infer'), maxTokens: z.number().int() })
    const env = decodeEnvelopeAs(signed(), { type: 'test', now: T0 }, schema)
    assert.equal(env.payload.maxTokens, 64)
    assert.throws(
      () => decodeEnvelopeAs(signed({ kind: 'train' }), { type: 'test', now: T0 }, schema),
      fails('E_BAD_REQUEST'),
    )
  })

  test('a payload that is not plain data is refused when signing', () => {
    assert.throws(
      () => signEnvelope(alice, 'test', { x: undefined }, { now: T0 }),
      fails('E_INVALID_ARGUMENT'),
    )
    assert.throws(
      () => signEnvelope(alice, 'test', { x: Number.NaN }, { now: T0 }),
      fails('E_INVALID_ARGUMENT'),
    )
  })

  test('a ttl beyond the type maximum is refused when signing', () => {
    const ttlMs = recordTypes.test.maxLifetimeMs + 1
    assert.throws(() => signEnvelope(alice, 'test', job, { now: T0, ttlMs }), fails('E_INVALID_ARGUMENT'))
  })
})

describe('memory replay guard', () => {
  test('forgets a nonce once its expiry has passed, so memory stays bounded', () => {
    let now = T0
    const guard = createMemoryReplayGuard({ now: () => now })
    assert.equal(guard.checkAndRemember('a', 'n1', T0 + 100), true)
    assert.equal(guard.checkAndRemember('a', 'n2', T0 + 200), true)
    assert.equal(guard.checkAndRemember('a', 'n1', T0 + 100), false)
    now = T0 + 150
    assert.equal(guard.checkAndRemember('b', 'n3', T0 + 300), true)
    assert.equal(guard.size, 2, 'n1 was dropped when it expired')
  })

  test('the same nonce from two signers is not a replay', () => {
    const guard = createMemoryReplayGuard({ now: () => T0 })
    assert.equal(guard.checkAndRemember('a', 'n', T0 + 100), true)
    assert.equal(guard.checkAndRemember('b', 'n', T0 + 100), true)
  })

  test('when full of live nonces it refuses new records instead of forgetting one', () => {
    const guard = createMemoryReplayGuard({ maxEntries: 2, now: () => T0 })
    guard.checkAndRemember('a', 'n1', T0 + 100)
    guard.checkAndRemember('a', 'n2', T0 + 100)
    assert.throws(() => guard.checkAndRemember('a', 'n3', T0 + 100), fails('E_INSUFFICIENT_MEMORY'))
    assert.equal(guard.checkAndRemember('a', 'n1', T0 + 100), false, 'n1 is still remembered')
  })

  test('evicts in expiry order whatever the insertion order', () => {
    let now = T0
    const guard = createMemoryReplayGuard({ now: () => now })
    const expiries = fc.sample(fc.integer({ min: 1, max: 1000 }), { numRuns: 200, seed: 7 })
    for (const [i, e] of expiries.entries()) guard.checkAndRemember('s', `n${i}`, T0 + e)
    now = T0 + 500
    guard.checkAndRemember('s', 'probe', T0 + 2000)
    assert.equal(guard.size, expiries.filter((e) => e > 500).length + 1)
  })
})

describe('canonical encoding', () => {
  // Reverses key order at every level: a different insertion order for the same data.
  const reorder = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(reorder)
    if (value === null || typeof value !== 'object') return value
    return Object.fromEntries(
      Object.entries(value)
        .reverse()
        .map(([k, v]) => [k, reorder(v)]),
    )
  }
  const nonce = new Uint8Array(16).fill(7)

  test('encode, decode, encode is byte-identical for any JSON-like payload', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (payload) => {
        const bytes = encodeEnvelope(signEnvelope(alice, 'job', payload, { now: T0, nonce }))
        const back = decodeEnvelope(bytes, { type: 'job', now: T0 })
        assert.deepEqual(encodeEnvelope(back), bytes)
        // Compared through JSON because DAG-CBOR, like JSON, encodes -0 as the integer 0.
        assert.deepEqual(back.payload, JSON.parse(JSON.stringify(payload)))
      }),
      { numRuns: 300 },
    )
  })

  test('the key order of payload objects does not change the signed bytes', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (payload) => {
        const a = encodeEnvelope(signEnvelope(alice, 'job', payload, { now: T0, nonce }))
        const b = encodeEnvelope(signEnvelope(alice, 'job', reorder(payload), { now: T0, nonce }))
        assert.deepEqual(b, a)
      }),
      { numRuns: 300 },
    )
  })
})
