// Noise's cipher with imported session keys: the same bytes as libp2p-noise's default in both
// directions, and a forged or corrupted message still refused.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { test } from 'node:test'
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { createNoiseCrypto } from '../../src/mesh/noise-crypto.ts'

const ours = createNoiseCrypto()
const nonce = (n: number) => {
  const bytes = Buffer.alloc(12)
  bytes.writeUInt32LE(n, 4)
  return bytes
}
const bytesOf = (data: Uint8Array | Iterable<Uint8Array>) =>
  Buffer.concat(data instanceof Uint8Array ? [data] : [...data])

/** A ciphertext in two pieces, as noise hands over a message that spans two TCP reads. */
function split(data: Uint8Array, at: number) {
  const pieces = [data.subarray(0, at), data.subarray(at)]
  const list = {
    byteLength: data.byteLength,
    [Symbol.iterator]: () => pieces[Symbol.iterator](),
    subarray: (start?: number, end?: number) => Buffer.from(data.subarray(start, end)),
    sublist: (start: number, end: number) => split(data.subarray(start, end), Math.max(0, at - start)),
  }
  return list as never
}

test('ciphertexts are byte-identical to libp2p-noise default and decrypt both ways', () => {
  const key = randomBytes(32)
  const ad = randomBytes(32)
  for (const size of [0, 100, 1199, 1200, 4096, 65_519]) {
    const plaintext = randomBytes(size)
    const mine = bytesOf(ours.chaCha20Poly1305Encrypt(plaintext, nonce(size), ad, key))
    const theirs = bytesOf(defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce(size), ad, key))
    assert.deepEqual(mine, theirs, `size ${size}`)
    assert.deepEqual(bytesOf(ours.chaCha20Poly1305Decrypt(theirs, nonce(size), ad, key)), plaintext)
    assert.deepEqual(bytesOf(defaultCrypto.chaCha20Poly1305Decrypt(mine, nonce(size), ad, key)), plaintext)
    if (size > 1200) {
      const fromPieces = ours.chaCha20Poly1305Decrypt(split(theirs, size >> 1), nonce(size), ad, key)
      assert.deepEqual(bytesOf(fromPieces), plaintext, `size ${size} in two pieces`)
      const sealedPieces = bytesOf(ours.chaCha20Poly1305Encrypt(split(plaintext, 7), nonce(size), ad, key))
      assert.deepEqual(sealedPieces, theirs, `size ${size} sealed from two pieces`)
    }
  }
})

test('a flipped bit in the text, the tag or the associated data is refused', () => {
  const key = randomBytes(32)
  const ad = randomBytes(32)
  const plaintext = randomBytes(65_519)
  const sealed = bytesOf(ours.chaCha20Poly1305Encrypt(plaintext, nonce(1), ad, key))
  for (const at of [0, 30_000, sealed.length - 1]) {
    const forged = Buffer.from(sealed)
    forged[at]! ^= 1
    assert.throws(() => ours.chaCha20Poly1305Decrypt(forged, nonce(1), ad, key), `bit flipped at ${at}`)
  }
  const otherAd = Buffer.from(ad)
  otherAd[0]! ^= 1
  assert.throws(() => ours.chaCha20Poly1305Decrypt(sealed, nonce(1), otherAd, key))
  assert.throws(() => ours.chaCha20Poly1305Decrypt(sealed, nonce(2), ad, key), 'another nonce')
})

test('a key array that is refilled with another key is never served a stale imported key', () => {
  const key = randomBytes(32)
  const plaintext = randomBytes(4096)
  const ad = new Uint8Array(0)
  const first = bytesOf(ours.chaCha20Poly1305Encrypt(plaintext, nonce(0), ad, key))
  randomBytes(32).copy(key)
  const second = bytesOf(ours.chaCha20Poly1305Encrypt(plaintext, nonce(0), ad, key))
  assert.notDeepEqual(first, second)
  assert.deepEqual(second, bytesOf(defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce(0), ad, key)))
})
