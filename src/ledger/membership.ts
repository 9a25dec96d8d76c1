// A node's membership in the ledger: the member-genesis op of its member and the
// node-binding op naming the node, appended once on the first start and never again.
//
// By default a node is its own member (the node key signs both ops, in its own log). The
// member is a separate parameter so that one member key can later bind several nodes: the
// member signs its genesis and the binding op, the node only signs its consent.

import type { Identity } from '../identity/keys.ts'
import type { Ledger } from './ledger.ts'
import { signBindingConsent } from './ops.ts'

export interface Membership {
  member: string
  node: string
  /** The ops appended now (none when both were already in the ledger). */
  appended: Array<'member-genesis' | 'node-binding'>
}

/** Appends what is missing of `member`'s genesis and its binding of `node`. Idempotent. */
export function ensureMembership(ledger: Ledger, ids: { member: Identity; node: Identity }): Membership {
  const { member, node } = ids
  const appended: Membership['appended'] = []
  if (!ledger.state.geneses.has(member.id)) {
    ledger.append(member, { kind: 'member-genesis', body: {} })
    appended.push('member-genesis')
  }
  if (!isBoundBy(ledger, node.id, member.id)) {
    const consent = signBindingConsent(node, member.id)
    ledger.append(member, { kind: 'node-binding', body: { consent } })
    appended.push('node-binding')
  }
  return { member: member.id, node: node.id, appended }
}

function isBoundBy(ledger: Ledger, node: string, member: string): boolean {
  for (const candidate of ledger.state.bindings.get(node)?.values() ?? []) {
    if (candidate.member === member) return true
  }
  return false
}
