// `/substrate/spot-check/1` between three real libp2p nodes in this process, each with its
// own SQLite ledger, the checker running substrate-tiny in a real runner process. An honest
// worker's receipt passes; a worker that returns text it did not generate is caught, the
// fraud proof lands in the checker's log and, once synced and the checker vouched for, the
// worker earns nothing. Every malformed or unauthorised request is refused with a typed code.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { lpStream } from '@libp2p/utils'
import { createLedger, type Ledger } from '../../src/ledger/ledger.ts'
import { decodeOp } from '../../src/ledger/ops.ts'
import { diff, emptyHeads } from '../../src/ledger/vector.ts'
import { silentLogger } from '../../src/logger.ts'
import { type CountersignedJob, createJobProtocol, type JobProtocol } from '../../src/mesh/job-protocol.ts'
import type { RunJob } from '../../src/mesh/job-worker.ts'
import { createRuntimeJobRunner } from '../../src/mesh/runtime-job.ts'
import {
  createSpotCheck,
  SPOT_CHECK_PROTOCOL,
  type SpotCheck,
  type SpotCheckResult,
} from '../../src/mesh/spot-check.ts'
import { MAX_CHECK_REQUEST_BYTES } from '../../src/mesh/spot-check-codec.ts'
import { TINY_ANSWER } from '../../src/models/builtin.ts'
import type { ModelRecord } from '../../src/models/types.ts'
import { createRuntime, type Runtime } from '../../src/runtime/runtime.ts'
import { openDatabase } from '../../src/store/database.ts'
import { writeTinyModelRecord } from '../helpers/tiny-model.ts'
import { startPeers, stopPeers, type TestPeer, waitFor } from './helpers.ts'

// Roles: 0 honest worker, 1 cheating worker, 2 requester, 3 checker, 4 an impatient checker.
const HONEST = 0
const CHEAT = 1
const REQUESTER = 2
const CHECKER = 3
// Waits only briefly for a request: for the silent-peer case alone (a loaded machine needs
// the default 10 s for real requests).
const IMPATIENT = 4

/** A worker that never runs the model: it streams made-up words and signs for them. */
const cheatingRunJob: RunJob = async function* () {
  const words = ['banana', ' tick', ' floor', ' tock', ' commons', ' zebra', ' credits', ' seven']
  for (let i = 0; i < 24; i++) yield { type: 'token', text: words[(i * 5 + 3) % words.length]!, tokens: 1 }
  yield {
    type: 'done',
    stats: { reason: 'length', promptTokens: 3, outputTokens: 24, promptEvalMs: 1, evalMs: 10 },
    loadMs: 0,
    totalMs: 11,
  }
}

describe('spot checks over /substrate/spot-check/1', () => {
  let dir: string
  let model: ModelRecord
  let runtime: Runtime
  let peers: TestPeer[] = []
  const jobs: JobProtocol[] = []
  const ledgers: Ledger[] = []
  const checks: SpotCheck[] = []
  const countersigned: CountersignedJob[] = []

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spot-check-'))
    model = await writeTinyModelRecord(join(dir, 'tiny.gguf'), 'substrate-tiny:latest')
    runtime = createRuntime(
      { logger: silentLogger },
      { threads: 1, parallel: 1, contextSize: 512, keepAliveMs: 60_000, maxLoadedModels: 1 },
    )
    peers = await startPeers(5)
    const honestRun = createRuntimeJobRunner({
      runtime,
      modelByDigest: (d) => (d === model.digest ? model : undefined),
    })
    for (const [i, peer] of peers.entries()) {
      const job = createJobProtocol({
        mesh: peer.mesh,
        identity: peer.identity,
        logger: silentLogger,
        hasModel: (d) => d === model.digest,
        runJob: i === CHEAT ? cheatingRunJob : honestRun,
      })
      await job.start()
      jobs.push(job)
      const ledger = createLedger({ db: openDatabase(join(dir, `ledger-${i}.db`)) })
      ledger.start()
      ledger.append(peer.identity, { kind: 'member-genesis', body: {} })
      ledgers.push(ledger)
      const check = createSpotCheck(
        {
          mesh: peer.mesh,
          identity: peer.identity,
          logger: silentLogger,
          ledger,
          runtime,
          // Only the checker holds the model as far as spot checks go: the test picks roles.
          modelByDigest: (d) => (i === CHECKER && d === model.digest ? model : undefined),
          candidates: () => peers.map((p) => p.identity.id),
        },
        { rate: 1, checkTimeoutMs: 60_000, ...(i === IMPATIENT ? { requestTimeoutMs: 1_000 } : {}) },
      )
      await check.start()
      checks.push(check)
    }
    jobs[REQUESTER]!.onCountersigned((c) => {
      countersigned.push(c)
      ledgers[REQUESTER]!.append(peers[REQUESTER]!.identity, {
        kind: 'receipt',
        body: { receipt: c.receipt.bytes },
      })
    })
  })

  after(async () => {
    for (const c of checks) await c.stop()
    for (const j of jobs) await j.stop()
    await stopPeers(peers)
    for (const l of ledgers) l.stop()
    await runtime?.stop()
    rmSync(dir, { recursive: true, force: true })
  })

  const id = (role: number) => peers[role]!.identity.id
  const ask = async (worker: number) => {
    await jobs[REQUESTER]!.run(id(worker), {
      model: model.digest,
      mode: 'completion',
      prompt: 'Who are you?',
      options: { temperature: 0 },
      maxTokens: 64,
    })
    return countersigned.at(-1)!
  }
  const resultsOf = (check: SpotCheck) => {
    const results: SpotCheckResult[] = []
    check.onResult((r) => results.push(r))
    return results
  }

  test('an honest worker passes, and the checker logs a signed honest verdict', async () => {
    const job = await ask(HONEST)
    assert.equal(job.output.trim(), TINY_ANSWER)
    const result = await checks[REQUESTER]!.requestCheck(id(CHECKER), job)
    assert.ok(!('error' in result), 'error' in result ? result.error.message : '')
    assert.equal(result.honest, true)
    assert.equal(result.implausible, 0)
    assert.ok(result.sampled > 0)
    const verdicts = opsOf(ledgers[CHECKER]!, id(CHECKER)).filter(
      (o) => o.facts.kind === 'spot-check-verdict',
    )
    assert.equal(verdicts.length, 1)
    assert.deepEqual(verdicts[0]!.facts, {
      kind: 'spot-check-verdict',
      receipt: job.receipt.cid,
      worker: id(HONEST),
      honest: true,
    })
    assert.equal(
      opsOf(ledgers[CHECKER]!, id(CHECKER)).filter((o) => o.facts.kind === 'fraud-proof').length,
      0,
    )
  })

  test('a cheating worker is caught through consider(), and once synced and vouched it earns nothing', async () => {
    const results = resultsOf(checks[REQUESTER]!)
    const honestJob = countersigned.at(-1)!
    const job = await ask(CHEAT)
    assert.equal(checks[REQUESTER]!.consider(job), true, 'rate 1 samples every receipt')
    await waitFor(() => results.length > 0, 'the spot check of the cheat', 60_000)
    const result = results[0]!
    assert.ok(!('error' in result), 'error' in result ? result.error.message : '')
    assert.equal(result.checker, id(CHECKER), 'the only third node with the model checks')
    assert.equal(result.honest, false)
    assert.ok(result.implausible >= 2)
    const proofs = opsOf(ledgers[CHECKER]!, id(CHECKER)).filter((o) => o.facts.kind === 'fraud-proof')
    assert.deepEqual(
      proofs.map((p) => p.facts),
      [{ kind: 'fraud-proof', receipt: job.receipt.cid, worker: id(CHEAT) }],
    )

    // Before: the requester's ledger pays both workers.
    const requesterLedger = ledgers[REQUESTER]!
    assert.ok(requesterLedger.balanceOf(id(CHEAT)).earned > 0)
    // Sync the checker's log (what /substrate/ledger-sync/1 does) and vouch for the checker.
    syncInto(ledgers[CHECKER]!, requesterLedger)
    assert.ok(requesterLedger.balanceOf(id(CHEAT)).earned > 0, 'an unvouched checker cannot void anyone')
    requesterLedger.append(peers[REQUESTER]!.identity, { kind: 'vouch', body: { member: id(CHECKER) } })
    assert.equal(requesterLedger.balanceOf(id(CHEAT)).earned, 0, 'the cheat is frozen')
    assert.ok(requesterLedger.balanceOf(id(HONEST)).earned > 0, 'the honest worker still earns')
    assert.ok(honestJob.receipt.worker === id(HONEST))
  })

  test('a receipt is only checked by a third node with the model, for its requester', async () => {
    const job = await ask(HONEST)
    const refusedWith = async (asker: number, checker: number, j: CountersignedJob, code: string) => {
      const r = await checks[asker]!.requestCheck(id(checker), j)
      assert.ok('error' in r, `expected ${code}`)
      assert.equal(r.error.code, code, r.error.message)
    }
    // Someone else holding the job's records may not spend the checker's compute on it.
    await refusedWith(CHEAT, CHECKER, job, 'E_SIGNATURE_INVALID')
    // The worker is never its own checker; nor are we.
    await refusedWith(REQUESTER, HONEST, job, 'E_INVALID_ARGUMENT')
    // A node without the model says so (the requester then tries the next).
    await refusedWith(REQUESTER, CHEAT, job, 'E_MODEL_NOT_FOUND')
    // Output that is not what the receipt hashes: a requester cannot frame a worker with it.
    await refusedWith(
      REQUESTER,
      CHECKER,
      { ...job, output: `${job.output} and then some` },
      'E_RECEIPT_INVALID',
    )
    // Another manifest (a different prompt) than the one the worker signed for.
    const other = await ask(HONEST)
    await refusedWith(REQUESTER, CHECKER, { ...job, manifest: other.manifest }, 'E_RECEIPT_INVALID')
    // A receipt with a broken countersignature.
    const forged = Uint8Array.from(job.receipt.bytes)
    forged[forged.length - 5]! ^= 0xff
    await refusedWith(
      REQUESTER,
      CHECKER,
      { ...job, receipt: { ...job.receipt, bytes: forged } },
      'E_RECEIPT_INVALID',
    )
    const verdicts = opsOf(ledgers[CHECKER]!, id(CHECKER)).filter(
      (o) => o.facts.kind === 'spot-check-verdict',
    )
    assert.equal(verdicts.length, 2, 'a refused request leaves nothing in the log')
  })

  test('garbage, an oversize frame and silence are refused and cost the checker nothing', async () => {
    const before = opsOf(ledgers[CHECKER]!, id(CHECKER)).length
    const send = async (bytes: Uint8Array | undefined, to = CHECKER) => {
      const stream = await peers[REQUESTER]!.mesh.libp2p.dialProtocol(
        peers[to]!.mesh.libp2p.peerId,
        SPOT_CHECK_PROTOCOL,
      )
      const lp = lpStream(stream, { maxDataLength: 1 << 20 })
      if (bytes !== undefined) await lp.write(bytes)
      const reply = dagCbor.decode((await lp.read({ signal: AbortSignal.timeout(20_000) })).subarray()) as {
        t: string
        code: string
      }
      stream.abort(new Error('done'))
      return reply
    }
    assert.deepEqual(pick(await send(dagCbor.encode({ t: 'check', receipt: 'no' }))), {
      t: 'refuse',
      code: 'E_PROTOCOL',
    })
    assert.deepEqual(pick(await send(Uint8Array.from([1, 2, 3]))), { t: 'refuse', code: 'E_PROTOCOL' })
    assert.deepEqual(pick(await send(undefined, IMPATIENT)), { t: 'refuse', code: 'E_PEER_TIMEOUT' })
    // The length prefix alone says too much: refused before the body is buffered.
    const prefix = varint(MAX_CHECK_REQUEST_BYTES + 1)
    const stream = await peers[REQUESTER]!.mesh.libp2p.dialProtocol(
      peers[CHECKER]!.mesh.libp2p.peerId,
      SPOT_CHECK_PROTOCOL,
    )
    stream.send(prefix)
    const lp = lpStream(stream)
    const reply = dagCbor.decode((await lp.read({ signal: AbortSignal.timeout(20_000) })).subarray())
    assert.deepEqual(pick(reply as { t: string; code: string }), { t: 'refuse', code: 'E_RECORD_TOO_LARGE' })
    stream.abort(new Error('done'))
    assert.equal(opsOf(ledgers[CHECKER]!, id(CHECKER)).length, before)
  })
})

const pick = (r: { t: string; code: string }) => ({ t: r.t, code: r.code })

function varint(n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80)
    n = Math.floor(n / 128)
  }
  out.push(n)
  return Uint8Array.from(out)
}

function opsOf(ledger: Ledger, author: string) {
  const { ops } = ledger.log.opsFor(diff(ledger.log.heads(), emptyHeads()))
  return ops.map((b) => decodeOp(b)).filter((o) => o.author === author)
}

function syncInto(from: Ledger, to: Ledger) {
  const { ops } = from.log.opsFor(diff(from.log.heads(), to.log.heads()))
  const summary = to.log.ingestMany(ops)
  assert.equal(summary.refused.length, 0, summary.refused[0]?.error.message)
}
