// A gossip flood from one peer, with real processes: two daemons on loopback (a victim and an
// honest peer) and a hostile process that joins the victim and publishes capacity records as
// fast as it can — well-signed ones far over the rate, then invalid ones. The victim must drop
// the excess before any crypto, score the flooder down, keep the honest peer in its view and
// keep answering its API; the flood is bounded in count and time.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { PeersResponse } from '../../src/api/types.ts'
import {
  type DaemonProcess,
  eventually,
  startDaemonProcess,
  stopAllDaemons,
} from '../helpers/daemon-process.ts'

const flooderEntry = fileURLToPath(new URL('../mesh/flood-process.ts', import.meta.url))
const FLOOD_RECORDS = 3_000
const FLOOD_MS = 5_000

async function peersOf(d: DaemonProcess): Promise<PeersResponse> {
  return (await (
    await fetch(`${d.url}/substrate/v1/peers`, { signal: AbortSignal.timeout(10_000) })
  ).json()) as PeersResponse
}

describe('a capacity gossip flood from one peer', () => {
  let victim: DaemonProcess
  let honest: DaemonProcess

  before(async () => {
    victim = await startDaemonProcess()
    honest = await startDaemonProcess(['--bootstrap', victim.meshAddrs[0]!])
    await eventually('the victim to see the honest peer', 20_000, async () =>
      (await peersOf(victim)).peers.some((p) => p.id === honest.id) ? true : undefined,
    )
  })
  after(stopAllDaemons)

  test('is rate limited and scored down; the honest peer stays in the view and the API answers throughout', async (t) => {
    const before = (await peersOf(victim)).gossip!
    const child = spawn(
      process.execPath,
      [flooderEntry, victim.meshAddrs[0]!, String(FLOOD_RECORDS), String(FLOOD_MS)],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    )
    const lines = createInterface({ input: child.stdout! })
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    const kill = setTimeout(() => child.kill('SIGKILL'), 40_000)
    try {
      const out: Array<Record<string, unknown>> = []
      lines.on('line', (l) => out.push(JSON.parse(l) as Record<string, unknown>))
      await eventually('the flooder to join', 20_000, async () => (out.length > 0 ? true : undefined))
      const flooder = String(out[0]!.id)
      // While it floods: the API keeps answering, and the flooder's score goes negative.
      let slowestMs = 0
      let lowestScore = Number.POSITIVE_INFINITY
      let polls = 0
      while (child.exitCode === null && polls++ < 400) {
        const asked = performance.now()
        const body = await peersOf(victim)
        slowestMs = Math.max(slowestMs, performance.now() - asked)
        const score = body.gossip?.scores.find((s) => s.id === flooder)?.score
        if (score !== undefined) lowestScore = Math.min(lowestScore, score)
        await sleep(100)
      }
      assert.equal(await exited, 0, 'the flooder finished')
      const done = out.find((o) => typeof o.published === 'number')!
      const after = (await peersOf(victim)).gossip!
      const floodSeconds = Number(done.ms) / 1000
      const accepted = after.accepted - before.accepted
      t.diagnostic(
        `flooder published ${done.published} records in ${done.ms} ms; the victim accepted ${accepted}, rate-limited ${after.rateLimited - before.rateLimited} (${after.flooded - before.flooded} as a flood), rejected ${after.rejected - before.rejected}; flooder score ≥ ${lowestScore}; slowest API answer ${Math.round(slowestMs)} ms`,
      )
      assert.ok(Number(done.published) >= 300, `a real flood: ${done.published} records`)
      // At most the burst plus the rate for the flood's duration, and a few honest records.
      assert.ok(accepted <= 5 + 2 * (floodSeconds + 1) + 5, `accepted ${accepted} records`)
      assert.ok(after.flooded > before.flooded, 'the excess was rejected as a flood')
      assert.ok(lowestScore < 0, `the flooder's gossip score went negative (${lowestScore})`)
      assert.ok(slowestMs < 2_000, `the API took ${Math.round(slowestMs)} ms during the flood`)
      // The view is still right: the honest peer is in it and keeps being refreshed.
      const seen = (await peersOf(victim)).peers.find((p) => p.id === honest.id)
      assert.ok(seen, 'the honest peer is still in the view')
      // An unchanged node re-announces every 60 s (capacity-gossip.ts keep-alive): wait for one.
      await eventually('a fresh record from the honest peer', 75_000, async () => {
        const p = (await peersOf(victim)).peers.find((e) => e.id === honest.id)
        return p !== undefined && p.lastSeen > seen.lastSeen ? true : undefined
      })
      const view = (await peersOf(victim)).peers
      assert.ok(view.length <= 2, `view holds ${view.length} peers`)
      assert.ok(view.every((p) => p.models.every((m) => m.name !== 'flood:latest') || p.id === flooder))
    } finally {
      clearTimeout(kill)
      if (child.exitCode === null) child.kill('SIGKILL')
    }
  })
})
