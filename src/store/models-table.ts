// Queries for the model store's tables: `blobs` (content-addressed files) and `models`
// (names pointing at blobs). Rows are checked on the way out, so a hand-edited database
// fails loudly here instead of deep inside the runtime.

import type { Db } from './database.ts'
import { integer, type Row, text } from './row.ts'

export interface BlobRow {
  /** "sha256:<64 hex>" */
  digest: string
  size: number
  /** relative to the models directory, e.g. "blobs/sha256-<hex>" */
  path: string
  createdAt: string
}

export interface ModelRow {
  /** normalized "name:tag" */
  name: string
  digest: string
  size: number
  modifiedAt: string
  detailsJson: string
}

function toBlob(row: Row): BlobRow {
  return {
    digest: text(row, 'digest'),
    size: integer(row, 'size'),
    path: text(row, 'path'),
    createdAt: text(row, 'created_at'),
  }
}

function toModel(row: Row): ModelRow {
  return {
    name: text(row, 'name'),
    digest: text(row, 'digest'),
    size: integer(row, 'size'),
    modifiedAt: text(row, 'modified_at'),
    detailsJson: text(row, 'details_json'),
  }
}

/** Records a blob; a second insert of the same digest is a no-op (the content is identical). */
export function insertBlob(db: Db, blob: BlobRow): void {
  db.prepare(
    'INSERT INTO blobs (digest, size, path, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING',
  ).run(blob.digest, blob.size, blob.path, blob.createdAt)
}

export function getBlob(db: Db, digest: string): BlobRow | undefined {
  const row = db.prepare('SELECT * FROM blobs WHERE digest = ?').get(digest)
  return row === undefined ? undefined : toBlob(row)
}

export function listBlobs(db: Db): BlobRow[] {
  return db
    .prepare('SELECT * FROM blobs ORDER BY digest')
    .all()
    .map((row) => toBlob(row))
}

export function deleteBlob(db: Db, digest: string): void {
  db.prepare('DELETE FROM blobs WHERE digest = ?').run(digest)
}

/** Points a name at a blob, replacing whatever the name pointed at before. */
export function upsertModel(db: Db, model: ModelRow): void {
  db.prepare(
    `INSERT INTO models (name, digest, size, modified_at, details_json) VALUES (?, ?, ?, ?, ?)
     ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, size = excluded.size,
       modified_at = excluded.modified_at, details_json = excluded.details_json`,
  ).run(model.name, model.digest, model.size, model.modifiedAt, model.detailsJson)
}

export function getModel(db: Db, name: string): ModelRow | undefined {
  const row = db.prepare('SELECT * FROM models WHERE name = ?').get(name)
  return row === undefined ? undefined : toModel(row)
}

export function listModels(db: Db): ModelRow[] {
  return db
    .prepare('SELECT * FROM models ORDER BY name')
    .all()
    .map((row) => toModel(row))
}

export function deleteModel(db: Db, name: string): boolean {
  return Number(db.prepare('DELETE FROM models WHERE name = ?').run(name).changes) > 0
}

export function countModelsUsingBlob(db: Db, digest: string): number {
  const row = db.prepare('SELECT count(*) AS n FROM models WHERE digest = ?').get(digest)
  return row === undefined ? 0 : integer(row, 'n')
}

/** Deletes the blob's row when no name uses it any more; returns whether it did. */
export function deleteBlobIfUnused(db: Db, digest: string): boolean {
  const result = db
    .prepare('DELETE FROM blobs WHERE digest = ? AND NOT EXISTS (SELECT 1 FROM models WHERE digest = ?)')
    .run(digest, digest)
  return Number(result.changes) > 0
}
