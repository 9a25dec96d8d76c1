// Queries for `model_manifests`: each stored blob's chunk manifest (see
// src/models/chunk-manifest.ts), computed once when the blob is stored so serving peers
// never re-hashes a file. A row goes with its blob (ON DELETE CASCADE).

import type { Db } from './database.ts'
import { blob, integer, text } from './row.ts'

export interface ManifestRow {
  /** "sha256:<64 hex>" of the blob */
  digest: string
  /** CID of the manifest bytes */
  cid: string
  chunkSize: number
  bytes: Uint8Array
}

export function putManifest(db: Db, row: ManifestRow): void {
  db.prepare(
    `INSERT INTO model_manifests (digest, cid, chunk_size, bytes) VALUES (?, ?, ?, ?)
     ON CONFLICT (digest) DO UPDATE SET cid = excluded.cid, chunk_size = excluded.chunk_size,
       bytes = excluded.bytes`,
  ).run(row.digest, row.cid, row.chunkSize, row.bytes)
}

export function getManifest(db: Db, digest: string): ManifestRow | undefined {
  const row = db.prepare('SELECT * FROM model_manifests WHERE digest = ?').get(digest)
  if (row === undefined) return undefined
  return {
    digest: text(row, 'digest'),
    cid: text(row, 'cid'),
    chunkSize: integer(row, 'chunk_size'),
    bytes: blob(row, 'bytes'),
  }
}
