// Wire formats of ledger sync: the frames of `/substrate/ledger-sync/1` (carried by
// job-codec.ts's bounded, timed frame channel) and the heads announcement gossiped on
// `substrate/ledger-heads/1`. Pure encode / decode / check, no network.
//
// The puller sends its version vector once; the responder answers with fork proofs, then
// ops in frames of at most MAX_FRAME_OPS ops and MAX_OPS_FRAME_BYTES bytes, then `end`.
// An announcement is a 32-byte digest of the version vector plus two counts: a few dozen
// bytes whatever the ledger's size (the vector itself is ~120 bytes per author).

import { createHash } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import { type Heads, headsToJSON } from '../ledger/vector.ts'
import { KiB, MiB } from '../protocol/limits.ts'

export const LEDGER_SYNC_PROTOCOL = '/substrate/ledger-sync/1'
export const LEDGER_HEADS_TOPIC = 'substrate/ledger-heads/1'

/** Most authors a pull frame names: the vector is the one part of a sync ∝ the ledger. */
export const MAX_PULL_AUTHORS = 32_768
/** A pull frame: ~120 bytes per author. */
export const MAX_PULL_FRAME_BYTES = 4 * MiB
/** Ops per `ops` frame, and their bytes (one op is at most 32 KiB, so one always fits). */
export const MAX_FRAME_OPS = 256
export const MAX_OPS_FRAME_BYTES = 1 * MiB
/** Fork proofs per `forks` frame (two ops each). */
export const MAX_FRAME_PROOFS = 16
/** The largest frame a responder may send: a full `ops` frame plus CBOR framing. */
export const MAX_RESPONDER_FRAME_BYTES = MAX_OPS_FRAME_BYTES + 64 * KiB
/** Our own newest ops ride along with an announcement when they are this few and small. */
export const MAX_ANNOUNCE_OPS = 4
export const MAX_ANNOUNCE_OPS_BYTES = 16 * KiB
export const MAX_ANNOUNCE_BYTES = MAX_ANNOUNCE_OPS_BYTES + 256

const bytesSchema = z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'expected bytes')
const idSchema = z.string().min(1).max(128)
const errorFields = { code: z.string().max(64), message: z.string().max(1024) }

export const pullFrameSchema = z.discriminatedUnion('t', [
  z.strictObject({
    t: z.literal('pull'),
    /** [author, seq, head CID] of every author the puller holds. */
    vector: z
      .array(z.tuple([idSchema, z.number().int().min(1).max(Number.MAX_SAFE_INTEGER), idSchema]))
      .max(MAX_PULL_AUTHORS),
    frozen: z.array(idSchema).max(MAX_PULL_AUTHORS),
    /** Most ops the puller takes this session; the responder says `more` when it stops there. */
    maxOps: z.number().int().min(1).max(1_000_000),
  }),
])
export type PullFrame = z.infer<typeof pullFrameSchema>

export const responderFrameSchema = z.discriminatedUnion('t', [
  z.strictObject({
    t: z.literal('forks'),
    proofs: z
      .array(z.strictObject({ first: bytesSchema, second: bytesSchema }))
      .min(1)
      .max(MAX_FRAME_PROOFS),
  }),
  // Never empty: every frame counts against the session's op cap, so frames are bounded too.
  z.strictObject({ t: z.literal('ops'), ops: z.array(bytesSchema).min(1).max(MAX_FRAME_OPS) }),
  /** `more`: the responder stopped at the puller's maxOps and holds more. */
  z.strictObject({ t: z.literal('end'), more: z.boolean() }),
  z.strictObject({ t: z.literal('error'), ...errorFields }),
])
export type ResponderFrame = z.infer<typeof responderFrameSchema>

export function pullFrame(heads: Heads, maxOps: number): PullFrame {
  return { t: 'pull', ...headsToJSON(heads), maxOps }
}

/** What a node announces about its ledger. */
export interface HeadsSummary {
  /** sha-256 of the sorted vector and frozen set: equal digests, equal ledgers. */
  digest: Uint8Array
  /** Ops held (the sum of every unfrozen author's seq) plus frozen authors. */
  total: number
  authors: number
}

export function summarizeHeads(heads: Heads): HeadsSummary {
  const hash = createHash('sha256')
  let total = 0
  const { vector, frozen } = headsToJSON(heads)
  for (const [author, seq, head] of vector) {
    // A frozen author's ops count for nothing and are never synced: two nodes holding
    // different branches of it agree once both hold the fork proof.
    if (heads.frozen.has(author)) continue
    hash.update(`${author} ${seq} ${head}\n`)
    total += seq
  }
  for (const author of frozen) hash.update(`frozen ${author}\n`)
  return { digest: hash.digest(), total: total + heads.frozen.size, authors: heads.vector.size }
}

const announceSchema = z.strictObject({
  v: z.literal(1),
  d: bytesSchema.refine((d) => d.length === 32, 'expected a 32-byte digest'),
  n: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  a: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  /** The announcer's own ops appended since its last announcement, oldest first (eager push). */
  o: z.array(bytesSchema).min(1).max(MAX_ANNOUNCE_OPS).optional(),
})

/** A heads summary as announced, with the announcer's own newest ops when they fit. */
export interface Announcement extends HeadsSummary {
  ops?: Uint8Array[]
}

export function encodeAnnouncement(announcement: Announcement): Uint8Array {
  const { digest, total, authors, ops } = announcement
  return dagCbor.encode({
    v: 1,
    d: digest,
    n: total,
    a: authors,
    ...(ops === undefined || ops.length === 0 ? {} : { o: ops }),
  })
}

/** Throws E_PROTOCOL (or E_RECORD_TOO_LARGE) for anything but a well-formed announcement. */
export function decodeAnnouncement(bytes: Uint8Array): Announcement {
  if (bytes.length > MAX_ANNOUNCE_BYTES) {
    throw new SubstrateError('E_RECORD_TOO_LARGE', `a heads announcement of ${bytes.length} bytes`)
  }
  let decoded: unknown
  try {
    decoded = dagCbor.decode(bytes)
  } catch (cause) {
    throw new SubstrateError('E_PROTOCOL', 'a heads announcement that is not DAG-CBOR', { cause })
  }
  const parsed = announceSchema.safeParse(decoded)
  if (!parsed.success) throw new SubstrateError('E_PROTOCOL', 'a malformed heads announcement')
  const { d, n, a, o } = parsed.data
  return { digest: d, total: n, authors: a, ...(o === undefined ? {} : { ops: o }) }
}

export const sameDigest = (a: Uint8Array, b: Uint8Array): boolean =>
  a.length === b.length && a.every((byte, i) => byte === b[i])
