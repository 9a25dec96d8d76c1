// The cheating-worker scenario (issue 5, acceptance) with real processes: three daemons on
// loopback (a requester that spot-checks every receipt, and two honest workers that hold the
// model and so can check each other's and the cheat's receipts) and a cheating worker process
// that speaks /substrate/job/1 by the book but answers with substrate-bench's output while
// claiming the requester's model. The cheat is caught by a third node's teacher-forced check
// in its sandboxed runner, the fraud proof reaches the requester by ledger sync, and the cheat
// earns nothing there; the honest workers' receipts are checked too and nobody flags them.

import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { after, before, describe, test } from 'node:test'
import { writeTinyModel } from '../../src/models/builtin.ts'
import {
  type DaemonProcess,
  eventually,
  startDaemonProcess,
  stopAllDaemons,
} from '../helpers/daemon-process.ts'

const MODEL = 'checked-tiny'

interface LogOp {
  author: string
  kind: string
  facts: { receipt?: string; worker?: string; honest?: boolean }
}

async function importModel(d: DaemonProcess, file: string): Promise<void> {
  const res = await fetch(`${d.url}/substrate/v1/models/import`, {
    method: 'POST',
    body: JSON.stringify({ path: file, name: MODEL, stream: false }),
  })
  assert.equal(res.status, 200, await res.text())
}

async function getJson<T>(d: DaemonProcess, path: string): Promise<T> {
  const res = await fetch(`${d.url}${path}`)
  assert.equal(res.status, 200, `${path}: ${await res.clone().text()}`)
  return (await res.json()) as T
}

const logOf = async (d: DaemonProcess) =>
  (await getJson<{ ops: LogOp[] }>(d, '/substrate/v1/ledger/log?limit=1000')).ops
const creditsOf = (d: DaemonProcess, member: string) =>
  getJson<{ balance: { earned: number }; excluded: Array<{ receipt: string; reason: string }> }>(
    d,
    `/substrate/v1/credits?member=${member}`,
  )

/** Asks the requester for one answer; returns the worker that served it. */
async function generate(requester: DaemonProcess, i: number): Promise<string> {
  const res = await fetch(`${requester.url}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({
      model: MODEL,
      prompt: `Question ${i}: who are you?`,
      stream: false,
      options: { temperature: 0 },
    }),
  })
  const body = (await res.json()) as { substrate?: { worker: string } }
  assert.equal(res.status, 200, JSON.stringify(body))
  return body.substrate!.worker
}

describe('a cheating worker in a mesh of daemons', { timeout: 300_000 }, () => {
  let requester: DaemonProcess
  let honest: DaemonProcess[]
  let cheat: ChildProcess
  let cheatId: string

  before(async () => {
    const first = await startDaemonProcess()
    const bootstrap = ['--bootstrap', first.meshAddrs[0]!]
    const [second, asking] = await Promise.all([
      startDaemonProcess(bootstrap),
      startDaemonProcess([...bootstrap, '--spot-check-rate', '1']),
    ])
    requester = asking!
    honest = [first, second!]
    const file = join(first.home, `${MODEL}.gguf`)
    await writeTinyModel(file, { contextLength: 2048 })
    await Promise.all(honest.map((w) => importModel(w, file)))
    cheat = spawn(
      process.execPath,
      [
        new URL('./cheating-worker-process.ts', import.meta.url).pathname,
        file,
        MODEL,
        'bench',
        first.meshAddrs[0]!,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, CHEAT_DIR: first.home } },
    )
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: cheat.stdout! }).once('line', resolve)
      cheat.once('exit', (code) => reject(new Error(`the cheating worker exited (${code})`)))
    })
    cheatId = (JSON.parse(line) as { id: string }).id
    // The requester vouches for the two honest members: their fraud proofs then count.
    for (const w of honest) {
      const res = await fetch(`${requester.url}/substrate/v1/ledger/vouch`, {
        method: 'POST',
        body: JSON.stringify({ member: w.id }),
      })
      assert.equal(res.status, 200, await res.text())
    }
    await eventually('the requester sees three workers offering the model', 30_000, async () => {
      const { peers } = await getJson<{ peers: Array<{ models: Array<{ name: string }> }> }>(
        requester,
        '/substrate/v1/peers',
      )
      return peers.filter((p) => p.models.some((m) => m.name === `${MODEL}:latest`)).length >= 3
        ? true
        : undefined
    })
  })

  after(async () => {
    cheat?.stdin?.end()
    cheat?.kill('SIGTERM')
    await stopAllDaemons()
  })

  test('the cheat is caught by a third node and earns nothing; honest workers are checked and not flagged', async () => {
    // It claims the model loaded, so it gets the first jobs; bounded in case it does not.
    const servedBy: string[] = []
    for (let i = 0; i < 6 && !servedBy.includes(cheatId); i++) servedBy.push(await generate(requester, i))
    assert.ok(servedBy.includes(cheatId), `the cheat served none of ${servedBy.length} jobs`)
    // Then it leaves, and the honest workers serve.
    cheat.stdin!.end()
    for (let i = 0; i < 8 && servedBy.filter((w) => w !== cheatId).length < 2; i++) {
      servedBy.push(await generate(requester, 100 + i))
    }
    const honestServed = new Set(servedBy.filter((w) => w !== cheatId))
    assert.ok(honestServed.size > 0, `no honest worker served: ${servedBy.join(', ')}`)

    // Verdicts are signed in the checkers' logs and reach the requester by ledger sync.
    const ops = await eventually('every receipt checked, as the requester sees it', 120_000, async () => {
      const log = await logOf(requester)
      const receipts = log.filter((o) => o.kind === 'receipt' && o.author === requester.id)
      const verdicts = log.filter((o) => o.kind === 'spot-check-verdict')
      const checked = receipts.every((r) => verdicts.some((v) => v.facts.receipt === r.facts.receipt))
      const proofLanded = log.some((o) => o.kind === 'fraud-proof' && o.facts.worker === cheatId)
      return checked && proofLanded ? log : undefined
    })
    const verdicts = ops.filter((o) => o.kind === 'spot-check-verdict')
    for (const v of verdicts) {
      assert.ok(
        honest.some((w) => w.id === v.author),
        'checked by a third node holding the model',
      )
      assert.notEqual(v.author, v.facts.worker, 'never by the worker itself')
      assert.equal(
        v.facts.honest,
        v.facts.worker !== cheatId,
        `verdict on ${v.facts.worker}: ${JSON.stringify(v)}`,
      )
    }
    const proofs = ops.filter((o) => o.kind === 'fraud-proof')
    assert.ok(proofs.length > 0)
    assert.ok(
      proofs.every((p) => p.facts.worker === cheatId),
      'no honest worker is accused',
    )

    // The cheat is frozen: it earns nothing on the requester's ledger; honest workers do.
    const cheated = await creditsOf(requester, cheatId)
    assert.equal(cheated.balance.earned, 0, JSON.stringify(cheated))
    assert.ok(
      cheated.excluded.length > 0 && cheated.excluded.every((e) => e.reason === 'void-worker'),
      JSON.stringify(cheated.excluded),
    )
    for (const w of honestServed) {
      const credits = await creditsOf(requester, w)
      assert.ok(credits.balance.earned > 0, `${w} earns`)
      assert.equal(credits.excluded.length, 0, JSON.stringify(credits.excluded))
    }
  })

  test('vouching is refused for oneself, for a non-id and for a malformed body', async () => {
    const vouch = async (body: string) => {
      const res = await fetch(`${requester.url}/substrate/v1/ledger/vouch`, { method: 'POST', body })
      return { status: res.status, code: ((await res.json()) as { code?: string }).code }
    }
    assert.deepEqual(await vouch(JSON.stringify({ member: requester.id })), {
      status: 400,
      code: 'E_INVALID_ARGUMENT',
    })
    assert.equal((await vouch(JSON.stringify({ member: 'not-a-peer-id' }))).code, 'E_LEDGER_BAD_MEMBER')
    assert.equal((await vouch(JSON.stringify({ member: honest[0]!.id, extra: 1 }))).status, 400)
    assert.equal((await vouch('{')).status, 400)
  })
})
