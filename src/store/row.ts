// Typed reads of one SQLite result row: every table module decodes its rows through these,
// so a column of the wrong type fails loudly instead of leaking `unknown` into the app.

import type { SQLOutputValue } from 'node:sqlite'

/** A row keyed by column name, or in SELECT order (a statement with setReturnArrays). */
export type Row = Record<string, SQLOutputValue> | SQLOutputValue[]

/** A column's name, or its position in an array row. */
type Column = string | number

const cell = (row: Row, column: Column) => (row as Record<Column, SQLOutputValue | undefined>)[column]

export function text(row: Row, column: Column): string {
  const value = cell(row, column)
  if (typeof value !== 'string') throw new Error(`column ${column} is not text: ${String(value)}`)
  return value
}

export function integer(row: Row, column: Column): number {
  const value = cell(row, column)
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new Error(`column ${column} is not an integer: ${String(value)}`)
  }
  return value
}

export function blob(row: Row, column: Column): Uint8Array {
  const value = cell(row, column)
  if (!(value instanceof Uint8Array)) throw new Error(`column ${column} is not a blob`)
  return value
}
