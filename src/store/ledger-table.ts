// Queries for the credits ledger's tables (migration 2): ledger_ops (every author's chain),
// ledger_authors (each chain's head), ledger_forks (one fork proof per frozen author) and
// ledger_checkpoints (saved balance-fold states). The ledger module decides what is valid;
// this file only stores and reads, and checks rows on the way out.

import type { Db } from './database.ts'
import { blob, integer, type Row, text } from './row.ts'

export interface LedgerOpRow {
  cid: string
  author: string
  seq: number
  kind: string
  at: number
  /** JSON of the op's facts (ledger/ops.ts OpFacts). */
  facts: string
  bytes: Uint8Array
}

export interface LedgerHeadRow {
  author: string
  /** Highest seq held; the chain is always contiguous from 1. */
  seq: number
  head: string
  headAt: number
}

export interface LedgerForkRow {
  author: string
  seq: number
  first: Uint8Array
  second: Uint8Array
  detectedAt: number
}

function toOp(row: Row): LedgerOpRow {
  return {
    cid: text(row, 'cid'),
    author: text(row, 'author'),
    seq: integer(row, 'seq'),
    kind: text(row, 'kind'),
    at: integer(row, 'at'),
    facts: text(row, 'facts'),
    bytes: blob(row, 'bytes'),
  }
}

function toHead(row: Row): LedgerHeadRow {
  return {
    author: text(row, 'author'),
    seq: integer(row, 'seq'),
    head: text(row, 'head'),
    headAt: integer(row, 'head_at'),
  }
}

function toFork(row: Row): LedgerForkRow {
  return {
    author: text(row, 'author'),
    seq: integer(row, 'seq'),
    first: blob(row, 'first'),
    second: blob(row, 'second'),
    detectedAt: integer(row, 'detected_at'),
  }
}

export function hasLedgerOp(db: Db, cid: string): boolean {
  return db.prepare('SELECT 1 FROM ledger_ops WHERE cid = ?').get(cid) !== undefined
}

export function getLedgerOpAt(db: Db, author: string, seq: number): LedgerOpRow | undefined {
  const row = db.prepare('SELECT * FROM ledger_ops WHERE author = ? AND seq = ?').get(author, seq)
  return row === undefined ? undefined : toOp(row)
}

/** Stores an op and moves its author's head; the caller has checked that seq = head + 1. */
export function insertLedgerOp(db: Db, op: LedgerOpRow): void {
  db.transaction(() => {
    db.prepare(
      'INSERT INTO ledger_ops (cid, author, seq, kind, at, facts, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ).run(op.cid, op.author, op.seq, op.kind, op.at, op.facts, op.bytes)
    db.prepare(
      `INSERT INTO ledger_authors (author, seq, head, head_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (author) DO UPDATE SET seq = excluded.seq, head = excluded.head, head_at = excluded.head_at`,
    ).run(op.author, op.seq, op.cid, op.at)
  })
}

export function getLedgerHead(db: Db, author: string): LedgerHeadRow | undefined {
  const row = db.prepare('SELECT * FROM ledger_authors WHERE author = ?').get(author)
  return row === undefined ? undefined : toHead(row)
}

export function listLedgerHeads(db: Db): LedgerHeadRow[] {
  return db
    .prepare('SELECT * FROM ledger_authors ORDER BY author')
    .all()
    .map((row) => toHead(row))
}

/** Ops of one author with from <= seq <= to, in seq order. */
export function listLedgerOpsOf(db: Db, author: string, from: number, to: number): LedgerOpRow[] {
  return db
    .prepare('SELECT * FROM ledger_ops WHERE author = ? AND seq BETWEEN ? AND ? ORDER BY seq')
    .all(author, from, to)
    .map((row) => toOp(row))
}

/**
 * Calls `visit` with every op stored after arrival position `afterRowid`, in arrival order.
 * A restart folds the whole ledger through this, so rows come as arrays (no per-row object
 * keyed by column name), a page at a time (a third faster than a row iterator at a million
 * rows), and without a generator between SQLite and the fold.
 */
export function forEachLedgerFact(
  db: Db,
  afterRowid: number,
  visit: (cid: string, author: string, at: number, facts: string) => void,
): void {
  // its own SQL text: the statement cache is per text, and this one returns arrays
  const statement = db.prepare(
    'SELECT rowid, cid, author, at, facts FROM ledger_ops WHERE rowid > ? ORDER BY rowid LIMIT ?',
  )
  statement.setReturnArrays(true)
  for (let after = afterRowid; ; ) {
    const rows = statement.all(after, FACTS_PAGE) as unknown as Row[]
    // columns by position, in the SELECT's order
    for (const row of rows) {
      visit(text(row, 1), text(row, 2), integer(row, 3), text(row, 4))
      after = integer(row, 0)
    }
    if (rows.length < FACTS_PAGE) return
  }
}

const FACTS_PAGE = 1000

export function countLedgerOps(db: Db): number {
  const row = db.prepare('SELECT count(*) AS n FROM ledger_ops').get()
  return row === undefined ? 0 : integer(row, 'n')
}

/** Records a fork proof; the first proof of an author is kept, later ones add nothing. */
export function insertLedgerFork(db: Db, fork: LedgerForkRow): void {
  db.prepare(
    `INSERT INTO ledger_forks (author, seq, first, second, detected_at) VALUES (?, ?, ?, ?, ?)
     ON CONFLICT (author) DO NOTHING`,
  ).run(fork.author, fork.seq, fork.first, fork.second, fork.detectedAt)
}

export function getLedgerFork(db: Db, author: string): LedgerForkRow | undefined {
  const row = db.prepare('SELECT * FROM ledger_forks WHERE author = ?').get(author)
  return row === undefined ? undefined : toFork(row)
}

export function listLedgerForks(db: Db): LedgerForkRow[] {
  return db
    .prepare('SELECT * FROM ledger_forks ORDER BY author')
    .all()
    .map((row) => toFork(row))
}

export interface LedgerCheckpointRow {
  name: string
  /** The arrival position (rowid) of the last op folded into `state`. */
  through: number
  state: string
  savedAt: number
}

export function saveLedgerCheckpoint(db: Db, checkpoint: LedgerCheckpointRow): void {
  db.prepare(
    `INSERT INTO ledger_checkpoints (name, through, state, saved_at) VALUES (?, ?, ?, ?)
     ON CONFLICT (name) DO UPDATE SET through = excluded.through, state = excluded.state,
       saved_at = excluded.saved_at`,
  ).run(checkpoint.name, checkpoint.through, checkpoint.state, checkpoint.savedAt)
}

export function getLedgerCheckpoint(db: Db, name: string): LedgerCheckpointRow | undefined {
  const row = db.prepare('SELECT * FROM ledger_checkpoints WHERE name = ?').get(name)
  if (row === undefined) return undefined
  return {
    name: text(row, 'name'),
    through: integer(row, 'through'),
    state: text(row, 'state'),
    savedAt: integer(row, 'saved_at'),
  }
}

/** The arrival position of the newest op (0 when none): what a checkpoint saved now covers. */
export function lastLedgerRowid(db: Db): number {
  const row = db.prepare('SELECT coalesce(max(rowid), 0) AS n FROM ledger_ops').get()
  return row === undefined ? 0 : integer(row, 'n')
}

/** The newest `limit` ops by arrival, newest first; of one author only when `author` is given. */
export function listLatestLedgerOps(db: Db, limit: number, author?: string): LedgerOpRow[] {
  const rows =
    author === undefined
      ? db.prepare('SELECT * FROM ledger_ops ORDER BY rowid DESC LIMIT ?').all(limit)
      : db.prepare('SELECT * FROM ledger_ops WHERE author = ? ORDER BY seq DESC LIMIT ?').all(author, limit)
  return rows.map((row) => toOp(row))
}
