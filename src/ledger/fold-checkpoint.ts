// Saving and restoring a balance fold, so a daemon folds only the ops that arrived since its
// last checkpoint instead of the whole ledger. Only the fold's inputs are saved (receipts,
// bindings, vouches, fraud proofs, freezes); the aggregates are re-derived on load, so a
// checkpoint can never carry a stale or hand-edited total. A checkpoint is trusted data of
// our own database, but it is still parsed with a schema: a bad one is refused, and the
// caller falls back to a cold fold.

import { z } from 'zod'
import { createFoldState, type FoldState, type LedgerParams } from './balances.ts'
import { addToSet, indexBinding, indexReceipt, indexVouch } from './fold-state.ts'

const CHECKPOINT_VERSION = 1

const checkpointSchema = z.strictObject({
  v: z.literal(CHECKPOINT_VERSION),
  frozen: z.array(z.string()),
  geneses: z.array(z.string()),
  // [receipt cid, worker, requester, day, promptTokens, outputTokens, loggers]
  receipts: z.array(
    z.tuple([z.string(), z.string(), z.string(), z.number(), z.number(), z.number(), z.array(z.string())]),
  ),
  // [node, member, at, op cid]
  bindings: z.array(z.tuple([z.string(), z.string(), z.number(), z.string()])),
  vouches: z.array(z.tuple([z.string(), z.array(z.string())])),
  fraud: z.array(z.tuple([z.string(), z.array(z.string())])),
})

export function serializeFoldState(state: FoldState): string {
  return JSON.stringify({
    v: CHECKPOINT_VERSION,
    frozen: [...state.frozen],
    geneses: [...state.geneses],
    receipts: [...state.receipts].map(([cid, e]) => [
      cid,
      e.worker,
      e.requester,
      e.day,
      e.promptTokens,
      e.outputTokens,
      e.loggers,
    ]),
    bindings: [...state.bindings].flatMap(([node, candidates]) =>
      [...candidates.values()].map((c) => [node, c.member, c.at, c.cid]),
    ),
    vouches: [...state.vouches].map(([member, vouchers]) => [member, [...vouchers]]),
    fraud: [...state.fraud].map(([worker, accusers]) => [worker, [...accusers]]),
  })
}

/** Restores a saved fold under `params` (which may differ from when it was saved). */
export function restoreFoldState(json: string, params?: LedgerParams): FoldState {
  const saved = checkpointSchema.parse(JSON.parse(json))
  const state = createFoldState(params)
  for (const a of saved.frozen) state.frozen.add(a)
  for (const a of saved.geneses) state.geneses.add(a)
  for (const [cid, worker, requester, day, promptTokens, outputTokens, loggers] of saved.receipts) {
    indexReceipt(state, cid, { worker, requester, day, promptTokens, outputTokens, loggers })
  }
  for (const [node, member, at, cid] of saved.bindings) indexBinding(state, node, { member, at, cid })
  for (const [member, vouchers] of saved.vouches) for (const v of vouchers) indexVouch(state, member, v)
  for (const [worker, accusers] of saved.fraud) for (const a of accusers) addToSet(state.fraud, worker, a)
  state.derived = undefined
  return state
}
