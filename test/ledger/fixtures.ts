// Builders for ledger tests: receipts in the exact mesh/job-records format (signed at a
// chosen time, which signReceipt/countersignReceipt do not take), op chains, databases.

import { createHash } from 'node:crypto'
import { encodeEnvelope, signEnvelope } from '../../src/identity/envelope.ts'
import { generateIdentity, type Identity } from '../../src/identity/keys.ts'
import { createLedgerLog, type LedgerLog } from '../../src/ledger/log.ts'
import { type LedgerOp, type OpDraft, signBindingConsent, signOp, signOpBytes } from '../../src/ledger/ops.ts'
import type { Receipt } from '../../src/mesh/job-records.ts'
import { type Db, openDatabase } from '../../src/store/database.ts'

/** Noon UTC, so a few hours either way stay on one day. */
export const T0 = Date.UTC(2026, 0, 15, 12)
export const DAY = 86_400_000

export const digest = (text: string) => `sha256:${createHash('sha256').update(text).digest('hex')}`

let jobCounter = 0

/** A countersigned receipt: the worker signs, the requester countersigns, both at `at`. */
export function makeReceipt(
  worker: Identity,
  requester: Identity,
  options: { at?: number; promptTokens?: number; outputTokens?: number; computeMs?: number } = {},
): Uint8Array {
  const at = options.at ?? T0
  const receipt: Receipt = {
    job: `bafyjob${++jobCounter}`,
    requester: requester.id,
    model: digest('model'),
    outputHash: digest(`output ${jobCounter}`),
    promptTokens: options.promptTokens ?? 40,
    outputTokens: options.outputTokens ?? 100,
    computeMs: options.computeMs ?? 500,
  }
  const inner = encodeEnvelope(signEnvelope(worker, 'receipt', receipt, { now: at }))
  return encodeEnvelope(signEnvelope(requester, 'receipt-countersign', { receipt: inner }, { now: at }))
}

/** Signs a chain of ops for one author, starting after `after` (or at seq 1). */
export function chain(
  author: Identity,
  drafts: readonly OpDraft[],
  options: { after?: LedgerOp; at?: number } = {},
): LedgerOp[] {
  const ops: LedgerOp[] = []
  let prev = options.after
  let at = options.at ?? prev?.at ?? T0
  for (const draft of drafts) {
    const op = signOp(author, { ...draft, seq: (prev?.seq ?? 0) + 1, prev: prev?.cid ?? null }, { now: at })
    ops.push(op)
    prev = op
    at += 1
  }
  return ops
}

/** The first op of `author`'s log, signed without any check: for ops a peer must refuse. */
export const rawFirstOp = (author: Identity, draft: OpDraft, at = T0): Uint8Array =>
  signOpBytes(author, { ...draft, seq: 1, prev: null }, { now: at })

export const receiptOp = (bytes: Uint8Array): OpDraft => ({ kind: 'receipt', body: { receipt: bytes } })
export const genesisOp = (): OpDraft => ({ kind: 'member-genesis', body: {} })
export const bindingOp = (node: Identity, member: Identity, at = T0): OpDraft => ({
  kind: 'node-binding',
  body: { consent: signBindingConsent(node, member.id, { now: at }) },
})
export const vouchOp = (member: Identity): OpDraft => ({ kind: 'vouch', body: { member: member.id } })

export function openLog(now = () => T0 + DAY): { db: Db; log: LedgerLog } {
  const db = openDatabase(':memory:')
  return { db, log: createLedgerLog({ db }, { now }) }
}

/**
 * Delivers ops in the given order the way a sync loop would: an op refused for a gap is
 * tried again after the others, until a pass adds nothing. Ops of an equivocating author
 * that no longer fit (chain, frozen) are dropped, as a node would.
 */
export function deliver(log: LedgerLog, ops: readonly Uint8Array[]): void {
  let pending = [...ops]
  for (;;) {
    const retry: Uint8Array[] = []
    for (const bytes of pending) {
      try {
        log.ingest(bytes)
      } catch (err) {
        const reason = (err as { reason?: string }).reason
        if (reason === 'gap') retry.push(bytes)
        // The other branch of an equivocating author: refused until its fork shows.
        else if (reason !== 'frozen' && reason !== 'chain') throw err
      }
    }
    if (retry.length === 0 || retry.length === pending.length) return
    pending = retry
  }
}

export const identities = (n: number): Identity[] => Array.from({ length: n }, () => generateIdentity())
