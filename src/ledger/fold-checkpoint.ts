// Saving and restoring a balance fold, so a daemon folds only the ops that arrived since its
// last checkpoint instead of the whole ledger. Only the fold's inputs are saved (receipts,
// bindings, vouches, fraud proofs, freezes); the aggregates are re-derived on load, so a
// checkpoint can never carry a stale or hand-edited total. A checkpoint is trusted data of
// our own database, but it is still parsed with a schema: a bad one is refused, and the
// caller falls back to a cold fold.

import { z } from 'zod'
import { createFoldState, type FoldState, type LedgerParams } from './balances.ts'
import { indexBinding, indexFraud, indexReceipt, indexVouch } from './fold-state.ts'

const CHECKPOINT_VERSION = 2

// Peer ids repeat on every receipt, so they are written once in `ids` and referred to by
// index: a million receipts among a few thousand nodes then take ~90 MB, not ~500 MB
// (which would also pass V8's largest string).
const index = z.number().int().min(0)
const checkpointSchema = z.strictObject({
  v: z.literal(CHECKPOINT_VERSION),
  ids: z.array(z.string()),
  frozen: z.array(index),
  geneses: z.array(index),
  // [receipt cid, worker, requester, day, promptTokens, outputTokens, ...loggers]; checked
  // field by field on restore (a schema walk over a million rows costs more than the fold)
  receipts: z.array(z.unknown()),
  // [node, member, at, op cid]
  bindings: z.array(z.tuple([index, index, z.number(), z.string()])),
  vouches: z.array(z.tuple([index, z.array(index)])),
  fraud: z.array(z.tuple([index, z.array(index)])),
})

export function serializeFoldState(state: FoldState): string {
  const ids: string[] = []
  const numbers = new Map<string, number>()
  const id = (value: string) => {
    let n = numbers.get(value)
    if (n === undefined) {
      n = ids.length
      ids.push(value)
      numbers.set(value, n)
    }
    return n
  }
  const body = {
    frozen: [...state.frozen].map(id),
    geneses: [...state.geneses].map(id),
    receipts: [...state.receipts].map(([cid, e]) => [
      cid,
      id(e.worker),
      id(e.requester),
      e.day,
      e.promptTokens,
      e.outputTokens,
      ...e.loggers.map(id),
    ]),
    bindings: [...state.bindings].flatMap(([node, candidates]) =>
      [...candidates.values()].map((c) => [id(node), id(c.member), c.at, c.cid]),
    ),
    vouches: [...state.vouches].map(([member, vouchers]) => [id(member), [...vouchers].map(id)]),
    fraud: [...state.fraud].map(([worker, accusers]) => [id(worker), [...accusers].map(id)]),
  }
  return JSON.stringify({ v: CHECKPOINT_VERSION, ids, ...body })
}

/** Restores a saved fold under `params` (which may differ from when it was saved). */
export function restoreFoldState(json: string, params?: LedgerParams): FoldState {
  const saved = checkpointSchema.parse(JSON.parse(json))
  const id = (n: unknown): string => {
    const value = typeof n === 'number' ? saved.ids[n] : undefined
    if (value === undefined) throw new Error(`checkpoint refers to unknown id ${String(n)}`)
    return value
  }
  const num = (v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new Error('checkpoint: bad number')
    return v
  }
  const state = createFoldState(params)
  for (const a of saved.frozen) state.frozen.add(id(a))
  for (const a of saved.geneses) state.geneses.add(id(a))
  for (const r of saved.receipts) {
    if (!Array.isArray(r)) throw new Error('checkpoint: bad receipt')
    const [cid, worker, requester, day, promptTokens, outputTokens, ...loggers] = r
    if (typeof cid !== 'string' || loggers.length === 0) throw new Error('checkpoint: bad receipt')
    indexReceipt(state, cid, {
      worker: id(worker),
      requester: id(requester),
      day: num(day),
      promptTokens: num(promptTokens),
      outputTokens: num(outputTokens),
      loggers: loggers.map(id),
    })
  }
  for (const [node, member, at, cid] of saved.bindings)
    indexBinding(state, id(node), { member: id(member), at, cid })
  for (const [member, vouchers] of saved.vouches)
    for (const v of vouchers) indexVouch(state, id(member), id(v))
  for (const [worker, accusers] of saved.fraud) for (const a of accusers) indexFraud(state, id(worker), id(a))
  state.derived = undefined
  return state
}
