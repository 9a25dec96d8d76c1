// Signed envelopes: the one wrapper for every record that crosses the network and matters.
// The signature covers `domain ‖ 0x00 ‖ DAG-CBOR({v, type, signer, payload, created,
// expires, nonce})`, so it binds the record type twice (domain and `type`) and a record
// signed as one type can never verify as another. Decoding checks the cheap, payload-blind
// things first and the signature before anything looks inside the payload.

import { createHash, randomBytes } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import type { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import { domainBytesOf, type RecordType, recordTypeSpec } from '../protocol/domains.ts'
import { ENVELOPE_VERSION, NONCE_BYTES, SIGNATURE_BYTES } from '../protocol/limits.ts'
import { type Identity, publicKeyFromId, verifySignature } from './keys.ts'
import type { ReplayGuard } from './replay-guard.ts'

// Re-exported so callers that sign and verify need one import; the guard is its own module
// because other stores (SQLite) implement the same interface.
export { createMemoryReplayGuard, type ReplayGuard } from './replay-guard.ts'

export interface Envelope<T = unknown> {
  readonly v: typeof ENVELOPE_VERSION
  readonly type: RecordType
  /** The signer's peer id; its public key is derived from it, never sent separately. */
  readonly signer: string
  readonly payload: T
  /** Unix milliseconds. */
  readonly created: number
  /** Unix milliseconds; at most the type's `maxLifetimeMs` after `created`. */
  readonly expires: number
  readonly nonce: Uint8Array
  readonly sig: Uint8Array
}

export interface SignOptions {
  now?: number
  /** Defaults to the type's `defaultTtlMs`; may not exceed its `maxLifetimeMs`. */
  ttlMs?: number
  /** 16 bytes; random unless a test needs a fixed one. */
  nonce?: Uint8Array
}

export interface DecodeOptions {
  /** The record type the caller expects; anything else is refused. */
  type: RecordType
  now?: number
  replay?: ReplayGuard
  /** Overrides the type's `maxBytes`, e.g. to be stricter on a particular stream. */
  maxSize?: number
}

const ENVELOPE_KEYS = ['v', 'type', 'signer', 'payload', 'created', 'expires', 'nonce', 'sig'] as const
const SEPARATOR = Uint8Array.of(0x00)

function signedBytes(env: Omit<Envelope, 'sig'>): Uint8Array {
  const { v, type, signer, payload, created, expires, nonce } = env
  const body = dagCbor.encode({ v, type, signer, payload, created, expires, nonce })
  return Buffer.concat([domainBytesOf(type), SEPARATOR, body])
}

export function signEnvelope<T>(
  identity: Identity,
  type: RecordType,
  payload: T,
  options: SignOptions = {},
): Envelope<T> {
  const spec = recordTypeSpec(type)
  const created = options.now ?? Date.now()
  const ttlMs = options.ttlMs ?? spec.defaultTtlMs
  const nonce = options.nonce ?? new Uint8Array(randomBytes(NONCE_BYTES))
  if (!Number.isSafeInteger(created) || created < 0) {
    throw new SubstrateError('E_INVALID_ARGUMENT', `created must be a non-negative integer, got ${created}`)
  }
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > spec.maxLifetimeMs) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `ttlMs for ${type} must be an integer in 1..${spec.maxLifetimeMs}, got ${ttlMs}`,
    )
  }
  if (nonce.length !== NONCE_BYTES) {
    throw new SubstrateError('E_INVALID_ARGUMENT', `a nonce is ${NONCE_BYTES} bytes, got ${nonce.length}`)
  }
  const unsigned: Omit<Envelope<T>, 'sig'> = {
    v: ENVELOPE_VERSION,
    type,
    signer: identity.id,
    payload,
    created,
    expires: created + ttlMs,
    nonce,
  }
  let toSign: Uint8Array
  try {
    toSign = signedBytes(unsigned)
  } catch (cause) {
    throw new SubstrateError(
      'E_INVALID_ARGUMENT',
      `a ${type} payload must be plain data (${String(cause)})`,
      { cause },
    )
  }
  const env: Envelope<T> = { ...unsigned, sig: identity.sign(toSign) }
  // Refuse here what every peer would refuse on arrival, so the mistake shows at its source.
  const size = encodeEnvelope(env).length
  if (size > spec.maxBytes) {
    throw new SubstrateError(
      'E_RECORD_TOO_LARGE',
      `a ${type} envelope is ${size} bytes; the limit is ${spec.maxBytes}`,
    )
  }
  return env
}

export function encodeEnvelope(env: Envelope): Uint8Array {
  // Pick the known fields so stray properties on the object never reach the wire.
  const { v, type, signer, payload, created, expires, nonce, sig } = env
  return dagCbor.encode({ v, type, signer, payload, created, expires, nonce, sig })
}

const badRequest = (message: string) => new SubstrateError('E_BAD_REQUEST', `malformed envelope: ${message}`)
// For error messages about untrusted values: bounded, and never throws (JSON.stringify does on bigint).
const show = (x: unknown) =>
  typeof x === 'string' ? JSON.stringify(x.slice(0, 64)) : typeof x === 'number' ? String(x) : typeof x

/**
 * Decodes and verifies an envelope received from outside. Checks, in order: size (before
 * decoding), DAG-CBOR well-formedness and canonical form, version, type, signature,
 * not future-dated, not expired, lifetime within bounds, not replayed. The payload is
 * returned as plain data: validate it with the type's schema before trusting its shape.
 */
export function decodeEnvelope(bytes: Uint8Array, options: DecodeOptions): Envelope {
  const { type } = options
  const spec = recordTypeSpec(type)
  const maxSize = options.maxSize ?? spec.maxBytes
  if (bytes.length > maxSize) {
    throw new SubstrateError(
      'E_RECORD_TOO_LARGE',
      `a ${type} envelope of ${bytes.length} bytes exceeds ${maxSize}`,
    )
  }

  let decoded: unknown
  try {
    decoded = dagCbor.decode(bytes)
  } catch (cause) {
    throw new SubstrateError('E_BAD_REQUEST', `malformed envelope: not DAG-CBOR (${String(cause)})`, {
      cause,
    })
  }
  // Only the canonical encoding is accepted, so one envelope has exactly one CID.
  if (!Buffer.from(dagCbor.encode(decoded)).equals(bytes)) throw badRequest('not canonical DAG-CBOR')
  if (
    typeof decoded !== 'object' ||
    decoded === null ||
    Array.isArray(decoded) ||
    decoded instanceof Uint8Array
  ) {
    throw badRequest('not a map')
  }
  const raw = decoded as Record<string, unknown>
  if (raw.v !== ENVELOPE_VERSION) {
    throw new SubstrateError('E_UNKNOWN_VERSION', `unknown envelope version ${show(raw.v)}`, {
      hint: 'the peer may run a newer release; upgrade this node',
    })
  }
  if (raw.type !== type) throw badRequest(`expected a ${type} record, got ${show(raw.type)}`)

  const keys = Object.keys(raw)
  if (keys.length !== ENVELOPE_KEYS.length || !ENVELOPE_KEYS.every((k) => Object.hasOwn(raw, k))) {
    throw badRequest(`fields must be exactly ${ENVELOPE_KEYS.join(', ')}`)
  }
  const { signer, payload, created, expires, nonce, sig } = raw
  if (typeof signer !== 'string') throw badRequest('signer is not a string')
  if (!Number.isSafeInteger(created) || !Number.isSafeInteger(expires)) throw badRequest('bad timestamps')
  if (!(nonce instanceof Uint8Array) || nonce.length !== NONCE_BYTES) throw badRequest('bad nonce')
  if (!(sig instanceof Uint8Array) || sig.length !== SIGNATURE_BYTES) throw badRequest('bad signature length')
  const env: Envelope = {
    v: ENVELOPE_VERSION,
    type,
    signer,
    payload,
    created: created as number,
    expires: expires as number,
    nonce,
    sig,
  }

  let publicKey: Uint8Array
  try {
    publicKey = publicKeyFromId(signer)
  } catch (cause) {
    throw new SubstrateError('E_SIGNATURE_INVALID', `${type} signer is not an Ed25519 peer id`, { cause })
  }
  if (!verifySignature(publicKey, signedBytes(env), sig)) {
    throw new SubstrateError('E_SIGNATURE_INVALID', `${type} signature does not verify for ${signer}`)
  }

  const now = options.now ?? Date.now()
  if (env.created > now + spec.maxSkewMs) {
    throw new SubstrateError(
      'E_RECORD_FUTURE',
      `${type} record is dated ${env.created - now} ms in the future`,
      { hint: "check this machine's clock (NTP)" },
    )
  }
  if (now - spec.maxSkewMs >= env.expires) {
    throw new SubstrateError('E_RECORD_EXPIRED', `${type} record expired ${now - env.expires} ms ago`)
  }
  // Checked after the signature so that the error names a real signer's mistake, and
  // because an unbounded lifetime would make a replay guard remember it forever.
  if (env.expires <= env.created || env.expires - env.created > spec.maxLifetimeMs) {
    throw badRequest(`${type} lifetime must be 1..${spec.maxLifetimeMs} ms`)
  }
  const nonceKey = Buffer.from(nonce).toString('base64url')
  if (
    options.replay &&
    !options.replay.checkAndRemember(signer, nonceKey, env.expires + spec.maxSkewMs, now)
  ) {
    throw new SubstrateError('E_REPLAY', `${type} record from ${signer} was already seen (nonce ${nonceKey})`)
  }
  return env
}

/** Decodes like `decodeEnvelope`, then validates the payload; a bad payload is E_BAD_REQUEST. */
export function decodeEnvelopeAs<T>(
  bytes: Uint8Array,
  options: DecodeOptions,
  schema: z.ZodType<T>,
): Envelope<T> {
  const env = decodeEnvelope(bytes, options)
  const parsed = schema.safeParse(env.payload)
  if (!parsed.success) throw badRequest(`${options.type} payload: ${parsed.error.message}`)
  return { ...env, payload: parsed.data }
}

/** CIDv1, dag-cbor codec, sha2-256: the name of a record's exact bytes. */
export function cidOf(bytes: Uint8Array): string {
  const digest = Digest.create(0x12, createHash('sha256').update(bytes).digest())
  return CID.createV1(dagCbor.code, digest).toString()
}

export function envelopeCid(env: Envelope): string {
  return cidOf(encodeEnvelope(env))
}
