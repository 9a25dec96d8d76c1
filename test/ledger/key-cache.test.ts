import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  cachedPublicKeyCount,
  generateIdentity,
  PUBLIC_KEY_CACHE_ENTRIES,
  verifySignature,
} from '../../src/identity/keys.ts'

const data = new TextEncoder().encode('ledger op')

test('a cached public key still refuses a wrong signature and wrong data', () => {
  const alice = generateIdentity()
  const sig = alice.sign(data)
  assert.equal(verifySignature(alice.publicKey, data, sig), true)
  assert.equal(verifySignature(alice.publicKey, data, sig), true, 'second check uses the cache')
  const tampered = Uint8Array.from(sig)
  tampered[0] = tampered[0]! ^ 1
  assert.equal(verifySignature(alice.publicKey, data, tampered), false)
  assert.equal(verifySignature(alice.publicKey, new TextEncoder().encode('other'), sig), false)
  assert.equal(verifySignature(generateIdentity().publicKey, data, sig), false)
})

test('the public key cache stays bounded under a flood of fresh keys', () => {
  const sig = new Uint8Array(64)
  for (let i = 0; i < PUBLIC_KEY_CACHE_ENTRIES + 50; i++) {
    const key = new Uint8Array(32)
    new DataView(key.buffer).setUint32(0, i)
    key[31] = 9 // some of these are not valid points; they must simply not verify
    verifySignature(key, data, sig)
  }
  assert.ok(cachedPublicKeyCount() <= PUBLIC_KEY_CACHE_ENTRIES)
})
