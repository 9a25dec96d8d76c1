// The capacity record a node gossips about itself, and the checks a received one must pass.
// Kept apart from the gossip loop so the scheduler (and tests) can sign and verify records
// without a libp2p host.

import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import { decodeEnvelopeAs, type Envelope, encodeEnvelope, signEnvelope } from '../identity/envelope.ts'
import type { Identity } from '../identity/keys.ts'

const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/)

// Bounds keep one record well under the envelope limit (16 KiB) and a view cheap to rank.
export const capacityRecordSchema = z.strictObject({
  /** Models this node holds on disk and could load. */
  models: z.array(z.strictObject({ digest: digestSchema, name: z.string().max(128) })).max(64),
  /** Digests of the models loaded right now: a job on one of them starts without a load. */
  loaded: z.array(digestSchema).max(16),
  freeSlots: z.number().int().min(0).max(1024),
  /** Decode speed measured on this node (0 when not yet measured). */
  tokensPerSecond: z.number().min(0).max(1e7),
  queueDepth: z.number().int().min(0).max(1_000_000),
  /** Unix ms when the node took this snapshot; orders records from one peer. */
  at: z.number().int().min(0),
})
export type CapacityRecord = z.infer<typeof capacityRecordSchema>
export type CapacitySnapshot = Omit<CapacityRecord, 'at'>

export function signCapacityRecord(
  identity: Identity,
  snapshot: CapacitySnapshot,
  options: { now?: number; ttlMs?: number } = {},
): Uint8Array {
  const now = options.now ?? Date.now()
  const record: CapacityRecord = {
    models: snapshot.models.map((m) => ({ digest: m.digest, name: m.name })),
    loaded: [...snapshot.loaded],
    freeSlots: snapshot.freeSlots,
    tokensPerSecond: snapshot.tokensPerSecond,
    queueDepth: snapshot.queueDepth,
    at: now,
  }
  const sign: { now: number; ttlMs?: number } = { now }
  if (options.ttlMs !== undefined) sign.ttlMs = options.ttlMs
  return encodeEnvelope(signEnvelope(identity, 'capacity', record, sign))
}

/**
 * Verifies a capacity record that arrived by gossip from `source` (the message's signed
 * origin, not the neighbour that forwarded it). A record signed by any other key is
 * refused: otherwise one peer could advertise capacity in another's name.
 */
export function verifyCapacityRecord(
  bytes: Uint8Array,
  source: string,
  now: number = Date.now(),
): Envelope<CapacityRecord> {
  const env = decodeEnvelopeAs(bytes, { type: 'capacity', now }, capacityRecordSchema)
  if (env.signer !== source) {
    throw new SubstrateError(
      'E_SIGNATURE_INVALID',
      `capacity record signed by ${env.signer} arrived from ${source}`,
    )
  }
  return env
}
