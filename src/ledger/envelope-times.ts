// Reads `created` and `expires` from an encoded envelope without decoding it. The ledger
// needs an op's time before it can verify the op (ops are judged at their own time), and a
// full DAG-CBOR decode of a 1 KiB op just for that cost as much as the canonical-form
// check that follows. Canonical DAG-CBOR sorts map keys by length, then bytes, so the
// envelope's fields come as v, sig, type, nonce, signer, created, expires, payload: both
// times sit before the payload and are found after skipping a few byte and text strings.
// Anything unexpected returns undefined and the caller decodes in full; nothing here
// decides validity (decodeEnvelope still checks every byte and the signature).

const TEXT = 3
const BYTES = 2
const UINT = 0
const MAP = 5

interface Head {
  major: number
  value: number
  next: number
}

function head(bytes: Uint8Array, at: number): Head | undefined {
  const first = bytes[at]
  if (first === undefined) return undefined
  const major = first >> 5
  const info = first & 0x1f
  if (info < 24) return { major, value: info, next: at + 1 }
  const size = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0
  if (size === 0 || at + 1 + size > bytes.length) return undefined
  let value = 0
  for (let i = 0; i < size; i++) value = value * 256 + bytes[at + 1 + i]!
  if (!Number.isSafeInteger(value)) return undefined
  return { major, value, next: at + 1 + size }
}

export function peekEnvelopeTimes(bytes: Uint8Array): { created: number; expires: number } | undefined {
  const map = head(bytes, 0)
  if (map === undefined || map.major !== MAP) return undefined
  let at = map.next
  let created: number | undefined
  for (let field = 0; field < map.value; field++) {
    const key = head(bytes, at)
    if (key === undefined || key.major !== TEXT || key.next + key.value > bytes.length) return undefined
    const name = Buffer.from(bytes.buffer, bytes.byteOffset + key.next, key.value).toString('latin1')
    const value = head(bytes, key.next + key.value)
    if (value === undefined) return undefined
    if (name === 'created' || name === 'expires') {
      if (value.major !== UINT) return undefined
      if (name === 'created') created = value.value
      else return created === undefined ? undefined : { created, expires: value.value }
      at = value.next
    } else if (value.major === BYTES || value.major === TEXT) {
      at = value.next + value.value
    } else if (value.major === UINT) {
      at = value.next
    } else {
      return undefined // the payload (a map) comes after both times; anything else is odd
    }
  }
  return undefined
}
