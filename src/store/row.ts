// Typed reads of one SQLite result row: every table module decodes its rows through these,
// so a column of the wrong type fails loudly instead of leaking `unknown` into the app.

import type { SQLOutputValue } from 'node:sqlite'

export type Row = Record<string, SQLOutputValue>

export function text(row: Row, column: string): string {
  const value = row[column]
  if (typeof value !== 'string') throw new Error(`column ${column} is not text: ${String(value)}`)
  return value
}

export function integer(row: Row, column: string): number {
  const value = row[column]
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new Error(`column ${column} is not an integer: ${String(value)}`)
  }
  return value
}

export function blob(row: Row, column: string): Uint8Array {
  const value = row[column]
  if (!(value instanceof Uint8Array)) throw new Error(`column ${column} is not a blob`)
  return value
}
