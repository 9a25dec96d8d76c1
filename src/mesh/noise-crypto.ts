// Noise's ChaCha20-Poly1305 through node:crypto (OpenSSL), as @chainsafe/libp2p-noise's own
// default does for messages of 1200 bytes and more, but with each session key imported into
// a KeyObject once instead of on every message: the default hands the raw key to
// createCipheriv, which converts it for each 64 KiB message (BENCHMARKS.md, "Peer model
// transfer": about a tenth of the cipher's cost). Same cipher, same bytes on the wire.

import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto'

const ALGORITHM = 'chacha20-poly1305'
const TAG_BYTES = 16
/** Below this the default's WebAssembly implementation is the faster one (its own measurement). */
const SMALL_MESSAGE_BYTES = 1200

type Bytes = Parameters<ICryptoInterface['chaCha20Poly1305Encrypt']>[0]

export function createNoiseCrypto(): ICryptoInterface {
  // Keyed by the key's array; the bytes are compared too, so a key array reused with other
  // bytes can never pick a stale KeyObject.
  const imported = new WeakMap<Uint8Array, { raw: Buffer; key: KeyObject }>()
  const keyFor = (k: Uint8Array): KeyObject => {
    const hit = imported.get(k)
    if (hit?.raw.equals(k) === true) return hit.key
    const raw = Buffer.from(k)
    const key = createSecretKey(raw)
    imported.set(k, { raw, key })
    return key
  }
  const pieces = (data: Bytes): Iterable<Uint8Array> => (data instanceof Uint8Array ? [data] : data)

  return {
    ...defaultCrypto,
    chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) {
      if (plaintext.byteLength < SMALL_MESSAGE_BYTES) {
        return defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
      }
      const cipher = createCipheriv(ALGORITHM, keyFor(k), nonce, { authTagLength: TAG_BYTES })
      cipher.setAAD(ad, { plaintextLength: plaintext.byteLength })
      const out: Buffer[] = []
      for (const piece of pieces(plaintext)) out.push(cipher.update(piece))
      out.push(cipher.final(), cipher.getAuthTag())
      return Buffer.concat(out)
    },
    chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst) {
      if (ciphertext.byteLength < SMALL_MESSAGE_BYTES) {
        return defaultCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
      }
      const textBytes = ciphertext.byteLength - TAG_BYTES
      const decipher = createDecipheriv(ALGORITHM, keyFor(k), nonce, { authTagLength: TAG_BYTES })
      decipher.setAAD(ad, { plaintextLength: textBytes })
      decipher.setAuthTag(ciphertext.subarray(textBytes))
      const out: Buffer[] = []
      const text =
        ciphertext instanceof Uint8Array
          ? ciphertext.subarray(0, textBytes)
          : ciphertext.sublist(0, textBytes)
      for (const piece of pieces(text)) out.push(decipher.update(piece))
      // final() throws when the tag does not match: the message was forged or corrupted.
      out.push(decipher.final())
      return out.length === 2 && out[1]!.length === 0 ? out[0]! : Buffer.concat(out)
    },
  }
}
