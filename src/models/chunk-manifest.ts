// A model's chunk manifest: the file's sha256 (its identity) plus one sha256 per fixed-size
// chunk, so a node pulling from peers can check every chunk the moment it arrives instead
// of learning only at the end that some peer lied. The manifest is DAG-CBOR and
// content-addressed (its CID is the sha256 of its bytes); whether its chunk hashes really
// add up to the file is only known once the whole file is there, so the puller checks the
// file's sha256 at the end as well.

import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { z } from 'zod'
import { SubstrateError } from '../errors.ts'
import { MiB } from '../protocol/limits.ts'

/**
 * Every holder cuts at the same size, so honest holders of one file serve byte-identical
 * manifests. 4 MiB measured best of 1/4/16 MiB on loopback (BENCHMARKS.md, "Peer model
 * transfer"): large enough that per-chunk round trips cost little, small enough that a
 * resume after a crash re-fetches little and a bad peer wastes little.
 */
export const CHUNK_SIZE = 4 * MiB
/** 128 Ki chunks of 4 MiB: models up to 512 GiB; the manifest is then ~4.3 MiB. */
export const MAX_CHUNKS = 128 * 1024
export const MAX_MANIFEST_BYTES = MAX_CHUNKS * 34 + 1024

export interface ChunkManifest {
  /** "sha256:<64 hex>" of the whole file */
  digest: string
  size: number
  chunkSize: number
  /** sha256 of each chunk, 32 bytes each; the last chunk may be short */
  chunks: Uint8Array[]
}

const DIGEST = /^sha256:[0-9a-f]{64}$/
const bytes32 = z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length === 32, 'expected 32 bytes')

const manifestSchema = z.strictObject({
  v: z.literal(1),
  digest: z.string().regex(DIGEST),
  size: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  chunkSize: z
    .number()
    .int()
    .min(64 * 1024)
    .max(16 * MiB),
  chunks: z.array(bytes32).min(1).max(MAX_CHUNKS),
})

export const chunkCount = (size: number, chunkSize: number) => Math.ceil(size / chunkSize)

/** Byte range [start, end) of chunk `index`. */
export function chunkRange(m: Pick<ChunkManifest, 'size' | 'chunkSize'>, index: number) {
  const start = index * m.chunkSize
  return { start, end: Math.min(m.size, start + m.chunkSize) }
}

export function encodeManifest(m: ChunkManifest): Uint8Array {
  return dagCbor.encode({ v: 1, digest: m.digest, size: m.size, chunkSize: m.chunkSize, chunks: m.chunks })
}

/** Decodes and checks a manifest's shape; `expectedDigest` guards against a swapped manifest. */
export function decodeManifest(bytes: Uint8Array, expectedDigest?: string): ChunkManifest {
  if (bytes.length > MAX_MANIFEST_BYTES) {
    throw new SubstrateError('E_RECORD_TOO_LARGE', `a chunk manifest of ${bytes.length} bytes is too large`)
  }
  let decoded: unknown
  try {
    decoded = dagCbor.decode(bytes)
  } catch (cause) {
    throw new SubstrateError('E_PROTOCOL', 'the chunk manifest is not DAG-CBOR', { cause })
  }
  const parsed = manifestSchema.safeParse(decoded)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new SubstrateError(
      'E_PROTOCOL',
      `malformed chunk manifest: ${issue?.path.join('.')} ${issue?.message}`,
    )
  }
  const m = parsed.data
  if (m.chunks.length !== chunkCount(m.size, m.chunkSize)) {
    throw new SubstrateError(
      'E_PROTOCOL',
      `chunk manifest lists ${m.chunks.length} chunks for ${m.size} bytes of ${m.chunkSize}-byte chunks`,
    )
  }
  if (expectedDigest !== undefined && m.digest !== expectedDigest) {
    throw new SubstrateError(
      'E_PROTOCOL',
      `asked for the manifest of ${expectedDigest}, got one for ${m.digest}`,
    )
  }
  return { digest: m.digest, size: m.size, chunkSize: m.chunkSize, chunks: m.chunks }
}

/** The manifest's own address: CIDv1, dag-cbor, sha2-256 of its encoded bytes. */
export async function manifestCid(bytes: Uint8Array): Promise<string> {
  return CID.createV1(dagCbor.code, await sha256.digest(bytes)).toString()
}

export function chunkMatches(m: ChunkManifest, index: number, data: Uint8Array): boolean {
  const { start, end } = chunkRange(m, index)
  if (data.length !== end - start) return false
  const hash = createHash('sha256').update(data).digest()
  return hash.equals(m.chunks[index]!)
}

/**
 * Reads `path` once and hashes it whole and per chunk. `expectedDigest`, when given, must
 * match (the store passes the digest it already knows, so a file changed underneath it is
 * caught here rather than served).
 */
export async function computeManifest(
  path: string,
  options: { chunkSize?: number; expectedDigest?: string } = {},
): Promise<ChunkManifest> {
  const chunkSize = options.chunkSize ?? CHUNK_SIZE
  const file = await open(path, 'r')
  try {
    const size = (await file.stat()).size
    if (size === 0) throw new SubstrateError('E_INVALID_MODEL_FILE', `${path} is empty`)
    const whole = createHash('sha256')
    const chunks: Uint8Array[] = []
    const buffer = Buffer.allocUnsafe(chunkSize)
    for (let start = 0; start < size; start += chunkSize) {
      const length = Math.min(chunkSize, size - start)
      await readFully(file, buffer, length, start)
      const data = buffer.subarray(0, length)
      whole.update(data)
      chunks.push(new Uint8Array(createHash('sha256').update(data).digest()))
    }
    const digest = `sha256:${whole.digest('hex')}`
    if (options.expectedDigest !== undefined && digest !== options.expectedDigest) {
      throw new SubstrateError(
        'E_CHECKSUM_MISMATCH',
        `${path} has ${digest}, expected ${options.expectedDigest}: the file changed on disk`,
      )
    }
    return { digest, size, chunkSize, chunks }
  } finally {
    await file.close()
  }
}

/** Reads exactly `length` bytes at `position` into `buffer`; a short file is an error. */
export async function readFully(
  file: {
    read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>
  },
  buffer: Buffer,
  length: number,
  position: number,
): Promise<void> {
  let done = 0
  while (done < length) {
    const { bytesRead } = await file.read(buffer, done, length - done, position + done)
    if (bytesRead === 0)
      throw new SubstrateError('E_INVALID_MODEL_FILE', `file ended at byte ${position + done}`)
    done += bytesRead
  }
}
