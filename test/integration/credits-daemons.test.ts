// Credits between three real daemons (separate processes, loopback libp2p, SQLite on disk):
// only alpha holds the model, so gamma's request is served by alpha. Alpha earns, gamma (a
// newcomer with no credits) spends and its daily floor pays, and beta, which took no part,
// learns the receipt by ledger sync: all three answer `substrate credits` alike.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import type { CreditsResponse, LedgerBalancesResponse, ServedInfo } from '../../src/api/types.ts'
import {
  type DaemonProcess,
  eventually,
  runCliProcess,
  startDaemonProcess,
  stopAllDaemons,
} from '../helpers/daemon-process.ts'

const MODEL = 'substrate-tiny'

async function getJson<T>(d: DaemonProcess, path: string): Promise<T> {
  const res = await fetch(`${d.url}${path}`)
  assert.equal(res.status, 200, `${path}: ${await res.clone().text()}`)
  return (await res.json()) as T
}

/** `substrate credits MEMBER --json` against `d`, as a separate process. */
async function cliCredits(d: DaemonProcess, member: string): Promise<CreditsResponse> {
  return JSON.parse(await runCliProcess(d, ['credits', member, '--json'])) as CreditsResponse
}

describe('credits across three daemons', () => {
  let alpha: DaemonProcess
  let beta: DaemonProcess
  let gamma: DaemonProcess
  let all: DaemonProcess[]

  before(async () => {
    alpha = await startDaemonProcess()
    const bootstrap = ['--bootstrap', alpha.meshAddrs[0]!]
    ;[beta, gamma] = await Promise.all([startDaemonProcess(bootstrap), startDaemonProcess(bootstrap)])
    all = [alpha, beta, gamma]
    // Only alpha keeps the model: it is the one worker gamma can be served by.
    for (const d of [beta, gamma]) {
      const res = await fetch(`${d.url}/api/delete`, {
        method: 'DELETE',
        body: JSON.stringify({ model: MODEL }),
      })
      assert.equal(res.status, 200)
    }
    await eventually('gamma to see alpha offer the model', 30_000, async () => {
      const { peers } = await getJson<{
        peers: Array<{ id: string; freeSlots: number; models: Array<{ name: string }> }>
      }>(gamma, '/substrate/v1/peers')
      return peers.some(
        (p) => p.id === alpha.id && p.freeSlots > 0 && p.models.some((m) => m.name === `${MODEL}:latest`),
      )
        ? true
        : undefined
    })
  })
  after(stopAllDaemons)

  test('the worker earns, the newcomer spends from its floor, and all three ledgers agree', async (t) => {
    const before = await getJson<CreditsResponse>(gamma, '/substrate/v1/credits')
    assert.equal(before.balance.earned, 0)
    assert.equal(before.balance.spent, 0)

    const res = await fetch(`${gamma.url}/api/generate`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, prompt: 'hello', stream: false }),
    })
    assert.equal(res.status, 200)
    const body = (await res.json()) as { response: string; substrate?: ServedInfo }
    const served = body.substrate
    assert.ok(served, 'served by the mesh')
    assert.equal(served.worker, alpha.id)
    const credits = served.receipt.outputTokens + Math.floor(served.receipt.promptTokens / 4)
    assert.ok(credits > 0)

    // Every node ends with the same ledger (same heads) and the same balances.
    const started = Date.now()
    const agreed = await eventually('the three ledgers to agree', 30_000, async () => {
      const views = await Promise.all(
        all.map((d) => getJson<LedgerBalancesResponse>(d, '/substrate/v1/ledger/balances')),
      )
      const same = views.every(
        (v) =>
          v.headsDigest === views[0]!.headsDigest &&
          JSON.stringify(v.balances) === JSON.stringify(views[0]!.balances),
      )
      return same && views[0]!.balances.length === 2 ? views[0]! : undefined
    })
    t.diagnostic(`ledgers agreed ${Date.now() - started} ms after the answer`)
    const byMember = new Map(agreed.balances.map((b) => [b.member, b]))
    const worker = byMember.get(alpha.id)
    const newcomer = byMember.get(gamma.id)
    assert.ok(worker && newcomer, JSON.stringify(agreed.balances))
    assert.equal(worker.earned, credits)
    assert.equal(worker.balance, credits)
    assert.equal(worker.spent, 0)
    assert.equal(newcomer.spent, credits)
    assert.equal(newcomer.floorCovered, credits, 'the floor paid for the newcomer')
    assert.equal(newcomer.balance, 0)
    assert.equal(newcomer.floorLeftToday, newcomer.floorPerDay - credits)
    assert.equal(byMember.has(beta.id), false, 'beta neither earned nor spent')

    // `substrate credits` on each node (the CLI for the worker, the API for the newcomer):
    // the same figures, and the receipt behind them.
    for (const d of all) {
      const w = await cliCredits(d, alpha.id)
      assert.deepEqual(w.balance, worker, `alpha's credits on ${d.id}`)
      assert.deepEqual(w.earnings[0]?.receipts, [served.receipt.cid])
      const g = await getJson<CreditsResponse>(d, `/substrate/v1/credits?member=${gamma.id}`)
      assert.deepEqual(g.balance, newcomer, `gamma's credits on ${d.id}`)
      assert.deepEqual(g.spending[0]?.receipts, [served.receipt.cid])
    }
    // Both parties logged the receipt in their own chains; beta only holds their copies.
    for (const d of [alpha, gamma]) {
      const { receipts } = await getJson<{ receipts: Array<{ cid: string; role: string }> }>(
        d,
        '/substrate/v1/receipts',
      )
      assert.deepEqual(
        receipts.map((r) => [r.cid, r.role]),
        [[served.receipt.cid, d === alpha ? 'worker' : 'requester']],
      )
    }
    const verify = await getJson<{ ok: boolean; ops: number }>(beta, '/substrate/v1/ledger/verify')
    assert.equal(verify.ok, true)
    // Three members' genesis and binding, and the receipt in two logs.
    assert.equal(verify.ops, 8)
  })
})
