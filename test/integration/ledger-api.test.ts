// The credits and ledger routes and commands on a real daemon: its own membership ops, a
// receipt it logged as worker for a stranger, vouching for other members, and every kind of
// bad query.

import assert from 'node:assert/strict'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { createClient } from '../../src/api/client.ts'
import { sendJson } from '../../src/api/http.ts'
import { ledgerRoutes } from '../../src/api/routes-ledger.ts'
import { createApiServer } from '../../src/api/server.ts'
import type {
  CreditsResponse,
  LedgerBalancesResponse,
  LedgerOpInfo,
  LedgerStatsResponse,
  LedgerVerifyResponse,
  LedgerVouchResponse,
} from '../../src/api/types.ts'
import { parseConfig } from '../../src/config/schema.ts'
import { SubstrateError } from '../../src/errors.ts'
import { generateIdentity, loadOrCreateIdentity } from '../../src/identity/keys.ts'
import { DEFAULT_LEDGER_PARAMS } from '../../src/ledger/balances.ts'
import { createLedger } from '../../src/ledger/ledger.ts'
import { createLedgerLog } from '../../src/ledger/log.ts'
import { createLogger, silentLogger } from '../../src/logger.ts'
import { createNode } from '../../src/node.ts'
import { openDatabase } from '../../src/store/database.ts'
import { runCli, startTestNode, type TestNode, tempHome } from '../helpers/node.ts'
import { chain, genesisOp, makeReceipt } from '../ledger/fixtures.ts'

const cli = runCli

describe('credits and ledger on a daemon', () => {
  let t: TestNode
  const stranger = generateIdentity()
  let receiptCid: string

  before(async () => {
    t = await startTestNode({ mesh: { enabled: false } })
    // What the worker side logs after a countersigned job: 100 tokens out, 40 in = 110 credits.
    const bytes = makeReceipt(t.node.identity, stranger, {
      at: Date.now(),
      outputTokens: 100,
      promptTokens: 40,
    })
    const op = t.node.ledger.append(t.node.identity, { kind: 'receipt', body: { receipt: bytes } })
    receiptCid = (op.facts as { receipt: string }).receipt
  })
  after(() => t.close())

  const get = async <T>(path: string): Promise<{ status: number; body: T }> => {
    const res = await fetch(`${t.url}${path}`)
    return { status: res.status, body: (await res.json()) as T }
  }

  test('a fresh daemon is a member of its own ledger: genesis and binding of itself', async () => {
    const { body } = await get<{ ops: LedgerOpInfo[] }>(
      `/substrate/v1/ledger/log?author=${t.node.identity.id}`,
    )
    assert.deepEqual(
      body.ops.map((o) => [o.seq, o.kind]),
      [
        [3, 'receipt'],
        [2, 'node-binding'],
        [1, 'member-genesis'],
      ],
    )
    assert.equal(body.ops[1]?.facts.node, t.node.identity.id)
    assert.equal(t.node.member, t.node.identity.id)
  })

  test('/substrate/v1/credits shows what the worker earned and which receipt, and the requester its spending', async () => {
    const mine = await get<CreditsResponse>('/substrate/v1/credits')
    assert.equal(mine.status, 200)
    assert.equal(mine.body.self, true)
    assert.equal(mine.body.balance.member, t.node.identity.id)
    assert.equal(mine.body.balance.earned, 110)
    assert.equal(mine.body.balance.balance, 110)
    assert.deepEqual(mine.body.earnings[0]?.receipts, [receiptCid])
    assert.equal(mine.body.earnings[0]?.counterparty, stranger.id)

    const theirs = await get<CreditsResponse>(`/substrate/v1/credits?member=${stranger.id}`)
    assert.equal(theirs.body.self, false)
    assert.equal(theirs.body.balance.spent, 110)
    // A newcomer's spending is paid by its (unvouched) floor: its balance does not go negative.
    assert.equal(theirs.body.balance.floorCovered, 110)
    assert.equal(theirs.body.balance.balance, 0)
    assert.equal(theirs.body.balance.floorLeftToday, theirs.body.balance.floorPerDay - 110)
  })

  test('balances, stats and verify agree with the log', async () => {
    const balances = await get<LedgerBalancesResponse>('/substrate/v1/ledger/balances')
    assert.deepEqual(
      balances.body.balances.map((b) => b.member).sort(),
      [t.node.identity.id, stranger.id].sort(),
    )
    const stats = await get<LedgerStatsResponse>('/substrate/v1/ledger/stats')
    assert.equal(stats.body.ops, 3)
    assert.equal(stats.body.members, 1)
    assert.equal(stats.body.receipts, 1)
    assert.equal(stats.body.headsDigest, balances.body.headsDigest)
    const verify = await get<LedgerVerifyResponse>('/substrate/v1/ledger/verify')
    assert.equal(verify.body.ok, true, JSON.stringify(verify.body))
    assert.equal(verify.body.ops, 3)
  })

  test('verify finds a tampered op and a balance that no longer matches', async () => {
    const db = t.node.db
    db.prepare(`UPDATE ledger_ops SET facts = ? WHERE author = ? AND seq = 3`).run(
      JSON.stringify({ kind: 'receipt', tampered: true }),
      t.node.identity.id,
    )
    try {
      const verify = await get<LedgerVerifyResponse>('/substrate/v1/ledger/verify')
      assert.equal(verify.body.ok, false)
      assert.equal(verify.body.problems[0]?.seq, 3)
      assert.match(verify.body.problems[0]!.problem, /facts differ/)
      assert.equal(verify.body.balancesMatch, false)
      const run = await cli(t, ['ledger', 'verify'])
      assert.equal(run.code, 15)
      assert.match(run.out, /NOT ok/)
      assert.match(run.err, /did not verify/)
    } finally {
      const bytes = db
        .prepare('SELECT bytes FROM ledger_ops WHERE author = ? AND seq = 3')
        .get(t.node.identity.id)
      assert.ok(bytes)
      const { decodeOp } = await import('../../src/ledger/ops.ts')
      const op = decodeOp(bytes.bytes as Uint8Array)
      db.prepare('UPDATE ledger_ops SET facts = ? WHERE author = ? AND seq = 3').run(
        JSON.stringify(op.facts),
        t.node.identity.id,
      )
    }
  })

  test('the daemon keeps answering while verify re-checks a ledger of several pages', async () => {
    const now = Date.now()
    const other = generateIdentity()
    for (let i = 0; i < 250; i++) {
      const receipt = makeReceipt(other, stranger, { at: now, outputTokens: 1, promptTokens: 0 })
      t.node.ledger.append(other, { kind: 'receipt', body: { receipt } })
      // The daemon runs in this process: let its sockets breathe between signatures.
      if (i % 50 === 0) await new Promise((resolve) => setImmediate(resolve))
    }
    // Status requests, one after another, for as long as verify runs: the daemon answers them
    // between verify's pages. (A fixed order raced: at load 22 a verify of these 253 ops once
    // finished before a single request sent 50 ms later was answered.)
    const started = performance.now()
    let verifyDone = false
    const verify = get<LedgerVerifyResponse>('/substrate/v1/ledger/verify').then((r) => {
      verifyDone = true
      return r
    })
    let answeredDuring = 0
    for (let i = 0; i < 10_000 && !verifyDone; i++) {
      const status = await fetch(`${t.url}/substrate/v1/status`)
      assert.equal(status.status, 200)
      if (!verifyDone) answeredDuring++
    }
    const report = await verify
    const took = performance.now() - started
    assert.equal(report.body.ok, true, JSON.stringify(report.body.problems))
    assert.equal(report.body.ops, 253)
    // Answered while verify ran, unless verify was over before one status request could be.
    assert.ok(answeredDuring > 0 || took < 100, `no status answered during a ${Math.round(took)} ms verify`)
  })

  test('bad member ids and bad query parameters are refused with typed errors', async () => {
    const cases: Array<[string, string]> = [
      ['/substrate/v1/credits?member=alice', 'E_LEDGER_BAD_MEMBER'],
      [`/substrate/v1/credits?member=${'x'.repeat(500)}`, 'E_LEDGER_BAD_QUERY'],
      ['/substrate/v1/credits?who=me', 'E_LEDGER_BAD_QUERY'],
      [`/substrate/v1/credits?member=${stranger.id}&member=${stranger.id}`, 'E_LEDGER_BAD_QUERY'],
      ['/substrate/v1/ledger/log?limit=0', 'E_LEDGER_BAD_QUERY'],
      ['/substrate/v1/ledger/log?limit=1001', 'E_LEDGER_BAD_QUERY'],
      ['/substrate/v1/ledger/log?limit=ten', 'E_LEDGER_BAD_QUERY'],
      ['/substrate/v1/ledger/log?limit=-1', 'E_LEDGER_BAD_QUERY'],
      ['/substrate/v1/ledger/log?author=12D3KooWnotakey', 'E_LEDGER_BAD_MEMBER'],
      ['/substrate/v1/ledger/stats?verbose=1', 'E_LEDGER_BAD_QUERY'],
      ['/substrate/v1/ledger/verify?x=', 'E_LEDGER_BAD_QUERY'],
    ]
    for (const [path, code] of cases) {
      const res = await get<{ code: string; error: string }>(path)
      assert.equal(res.status, 400, path)
      assert.equal(res.body.code, code, `${path}: ${res.body.error}`)
    }
    const res = await fetch(`${t.url}/substrate/v1/credits`, { method: 'POST' })
    assert.equal(res.status, 405)
    // The client raises the same typed error.
    const client = createClient({ baseUrl: t.url })
    await assert.rejects(
      client.credits('bob'),
      (e: unknown) => e instanceof SubstrateError && e.code === 'E_LEDGER_BAD_MEMBER',
    )
  })

  test('substrate credits and ledger commands render the same facts, and --json prints the API body', async () => {
    const human = await cli(t, ['credits'])
    assert.equal(human.code, 0, human.err)
    assert.match(human.out, /balance\s+110 credits/)
    assert.match(human.out, /\(this node\)/)
    assert.ok(human.out.includes(receiptCid))
    const json = await cli(t, ['credits', stranger.id, '--json'])
    assert.equal(json.code, 0, json.err)
    assert.equal((JSON.parse(json.out) as CreditsResponse).balance.spent, 360) // 110 + 250 × 1

    const log = await cli(t, ['ledger', 'log', '--limit', '2'])
    assert.equal(log.code, 0, log.err)
    assert.equal(log.out.trimEnd().split('\n').length, 3) // header + 2 ops
    const stats = await cli(t, ['ledger', 'stats', '--json'])
    assert.equal((JSON.parse(stats.out) as LedgerStatsResponse).receipts, 251)
    const ok = await cli(t, ['ledger', 'verify'])
    assert.equal(ok.code, 0, ok.err)
    assert.match(ok.out, /^ok: 253 ops of 2 authors/)

    const badLimit = await cli(t, ['ledger', 'log', '--limit', 'lots'])
    assert.equal(badLimit.code, 2)
    assert.match(badLimit.err, /--limit must be/)
    const badSub = await cli(t, ['ledger', 'burn'])
    assert.equal(badSub.code, 2)
    assert.match(badSub.err, /unknown ledger command 'burn'/)
    const badMember = await cli(t, ['credits', 'alice'])
    assert.equal(badMember.code, 15)
    assert.match(badMember.err, /not an Ed25519 peer id/)
    const help = await cli(t, ['ledger', '--help'])
    assert.equal(help.code, 0)
    assert.match(help.out, /Usage: substrate ledger log\|verify\|stats/)
  })

  // After the test above: its op counts are of a ledger without vouches.
  test('substrate ledger vouch gives another member the full floor, and says what it signed', async () => {
    const credits = async (member: string) => {
      const run = await cli(t, ['credits', member, '--json'])
      assert.equal(run.code, 0, run.err)
      return (JSON.parse(run.out) as CreditsResponse).balance
    }
    const full = DEFAULT_LEDGER_PARAMS.floorPerDay
    const quarter = (full * DEFAULT_LEDGER_PARAMS.unvouchedFloorPercent) / 100
    const before = await credits(stranger.id)
    assert.equal(before.vouched, false)
    assert.equal(before.floorPerDay, quarter)
    assert.equal(before.spent, 360)

    const run = await cli(t, ['ledger', 'vouch', stranger.id])
    assert.equal(run.code, 0, run.err)
    const [signed] = (
      await get<{ ops: LedgerOpInfo[] }>(`/substrate/v1/ledger/log?author=${t.node.identity.id}&limit=1`)
    ).body.ops
    assert.equal(signed?.kind, 'vouch')
    assert.equal(signed.facts.member, stranger.id)
    assert.equal(signed.seq, 4) // after genesis, binding and the receipt
    assert.match(run.out, new RegExp(`^vouched for  ${stranger.id}$`, 'm'))
    assert.match(run.out, new RegExp(`^op {11}${signed.cid} \\(seq 4 `, 'm'))
    assert.match(run.out, new RegExp(`^floor {8}${full} credits a day: vouched`, 'm'))

    // DESIGN.md: a member vouched into the members' chamber counts for the (full) floor.
    const after = await credits(stranger.id)
    assert.equal(after.vouched, true)
    assert.equal(after.floorPerDay, full)
    assert.equal(after.floorLeftToday, full - 360)
    assert.equal(after.balance, 0)
    assert.equal((await credits(t.node.identity.id)).vouched, false, 'vouching does not vouch back')

    // --json prints the API body.
    const newcomer = generateIdentity()
    const json = await cli(t, ['ledger', 'vouch', newcomer.id, '--json'])
    assert.equal(json.code, 0, json.err)
    const body = JSON.parse(json.out) as LedgerVouchResponse
    assert.deepEqual(
      { ...body, cid: typeof body.cid },
      {
        member: newcomer.id,
        voucher: t.node.identity.id,
        cid: 'string',
        seq: 5,
        vouchers: [t.node.identity.id],
        vouched: true,
        floorPerDay: full,
      },
    )
    const ok = await cli(t, ['ledger', 'verify'])
    assert.equal(ok.code, 0, ok.err)
    assert.match(ok.out, /^ok: 255 ops of 2 authors/)
  })

  test('substrate ledger vouch refuses a second vouch, itself, a non-id and a missing member, in one line each', async () => {
    const cases: Array<[string[], number, RegExp]> = [
      [['ledger', 'vouch', stranger.id], 15, /^Error: this node's member already vouched for 12D3KooW\w+$/],
      [['ledger', 'vouch', t.node.identity.id], 2, /^Error: a member cannot vouch for itself$/],
      [['ledger', 'vouch', 'alice'], 15, /^Error: member 'alice' is not an Ed25519 peer id$/],
      [['ledger', 'vouch', '12D3KooWnotakey'], 15, /not an Ed25519 peer id$/],
      [['ledger', 'vouch'], 2, /^Error: 'ledger vouch' needs the MEMBER to vouch for$/],
      [['ledger', 'vouch', stranger.id, stranger.id], 2, /^Error: unexpected argument/],
      [['ledger', 'stats', stranger.id], 2, /^Error: unexpected argument '12D3KooW\w+' to 'ledger stats'$/],
    ]
    const opsBefore = (await get<LedgerStatsResponse>('/substrate/v1/ledger/stats')).body.ops
    for (const [argv, code, line] of cases) {
      const run = await cli(t, argv)
      assert.equal(run.code, code, `${argv.join(' ')}: ${run.err}`)
      const [first, ...rest] = run.err.trimEnd().split('\n')
      assert.match(first ?? '', line, argv.join(' '))
      assert.ok(
        rest.every((l) => l.startsWith('hint: ')),
        run.err,
      )
      assert.equal(run.out, '')
    }
    assert.equal((await get<LedgerStatsResponse>('/substrate/v1/ledger/stats')).body.ops, opsBefore)
    // The API client raises the same typed errors.
    const client = createClient({ baseUrl: t.url })
    await assert.rejects(
      client.vouch(stranger.id),
      (e: unknown) => e instanceof SubstrateError && e.code === 'E_LEDGER_ALREADY_VOUCHED',
    )

    const help = await cli(t, ['ledger', 'vouch', '--help'])
    assert.equal(help.code, 0, help.err)
    assert.match(help.out, /vouch MEMBER/)
    assert.match(help.out, /Membership is by vouching: a vouched\n\s+member gets the full daily floor/)
    assert.match(help.out, /only a vouched member's fraud proofs/)
    assert.match(help.out, /vouch only for people you know/)
  })
})

describe('a daemon without a member key', () => {
  test('substrate ledger vouch says so (E_NOT_FOUND, exit 4)', async (ctx) => {
    // createNode always holds its member key, so this is the ledger routes alone, without
    // `vouch`, on a real ledger; plus the status route the CLI asks first.
    const home = tempHome()
    const db = openDatabase(join(home, 'substrate.db'))
    const ledger = createLedger({ db })
    ledger.start()
    const id = generateIdentity().id
    const api = createApiServer(
      {
        logger: silentLogger,
        routes: [
          {
            method: 'GET',
            path: '/substrate/v1/status',
            handler: async (_req, res) => sendJson(res, 200, { node: id }),
          },
          ...ledgerRoutes({ db, ledger, node: id, member: id }),
        ],
      },
      { host: '127.0.0.1', port: 0 },
    )
    await api.start()
    ctx.after(async () => {
      await api.stop()
      ledger.stop()
      db.close()
      rmSync(home, { recursive: true, force: true })
    })
    const node = { url: api.url, home } as TestNode
    const run = await cli(node, ['ledger', 'vouch', generateIdentity().id])
    assert.equal(run.code, 4, run.err)
    assert.match(run.err, /^Error: this node holds no member key to vouch with\n/)
    const bad = await cli(node, ['ledger', 'vouch', 'alice'])
    assert.equal(bad.code, 15, bad.err)
  })
})

describe('a daemon whose own chain is frozen', () => {
  test('still starts and serves, says why it cannot join, and shows itself frozen', async () => {
    const home = tempHome()
    // Before the first start: a fork proof against this node's key is already in its database
    // (as if a peer had proven that the key signed two different first ops).
    const identity = await loadOrCreateIdentity(join(home, 'identity.key'))
    const db = openDatabase(join(home, 'substrate.db'))
    const [a, b] = [
      chain(identity, [genesisOp()])[0]!,
      chain(identity, [{ kind: 'member-genesis', body: { name: 'x' } }])[0]!,
    ]
    createLedgerLog({ db }).ingestForkProof({ first: a.bytes, second: b.bytes })
    db.close()

    const lines: string[] = []
    const logger = createLogger({ level: 'info', json: true, write: (line: string) => lines.push(line) })
    const node = await createNode(
      parseConfig({
        home,
        api: { host: '127.0.0.1', port: 0 },
        mesh: { enabled: false },
        runtime: { engine: 'node-llama-cpp', engineBuild: false },
      }),
      {
        logger,
      },
    )
    try {
      assert.ok(
        lines.some((l) => l.includes('could not join the credits ledger')),
        lines.join('\n'),
      )
      const res = await fetch(`${node.api.url}/substrate/v1/credits`)
      assert.equal(res.status, 200)
      const body = (await res.json()) as CreditsResponse
      assert.equal(body.balance.frozen, true)
      assert.equal(body.balance.member, identity.id)
      // Nothing it signs would count, so it does not vouch either.
      const vouch = await runCli({ url: node.api.url, home } as TestNode, [
        'ledger',
        'vouch',
        generateIdentity().id,
      ])
      assert.equal(vouch.code, 15, vouch.err)
      assert.match(vouch.err, /^Error: this node's member 12D3KooW\w+ is frozen by a fork proof\n/)
    } finally {
      await node.stop()
      rmSync(home, { recursive: true, force: true })
    }
  })
})
