// Ledger sync between separate OS processes: a node SIGKILLed in the middle of a large
// pull leaves a consistent log (every batch is one transaction), and once restarted on the
// same database it finishes the sync from where it stopped.

import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface, type Interface } from 'node:readline'
import { after, describe, test } from 'node:test'
import { auditLedger } from '../../src/ledger/audit.ts'
import { createLedger } from '../../src/ledger/ledger.ts'
import { openDatabase } from '../../src/store/database.ts'
import { countLedgerOps } from '../../src/store/ledger-table.ts'
import { balancesOf, headsOf, receiptWorld, startLedgerPeer } from './ledger-sync-helpers.ts'

interface Child {
  process: ChildProcess
  lines: AsyncIterator<string>
  rl: Interface
}

function spawnNode(dbPath: string): Child {
  const child = spawn(
    process.execPath,
    [new URL('./ledger-sync-process.ts', import.meta.url).pathname, dbPath],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  )
  const rl = createInterface({ input: child.stdout! })
  return { process: child, rl, lines: rl[Symbol.asyncIterator]() }
}

/** The next line of the child's output that satisfies `match`, within `timeoutMs`. */
async function nextLine(child: Child, match: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let timer: NodeJS.Timeout | undefined
    const next = await Promise.race([
      child.lines.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error('the child said nothing in time')),
          Math.max(0, deadline - Date.now()),
        )
      }),
    ]).finally(() => clearTimeout(timer))
    if (next.done === true) throw new Error('the child exited')
    const line = JSON.parse(next.value) as Record<string, unknown>
    if (match(line)) return line
  }
}

function inspect(dbPath: string) {
  const db = openDatabase(dbPath)
  const ledger = createLedger({ db })
  ledger.start()
  const result = {
    ops: countLedgerOps(db),
    audit: auditLedger(db, ledger),
    heads: headsOf(ledger),
    balances: balancesOf(ledger),
  }
  ledger.stop()
  db.close()
  return result
}

describe('ledger sync across processes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ledger-sync-'))
  const children: Child[] = []
  after(() => {
    for (const c of children)
      if (c.process.exitCode === null && c.process.signalCode === null) c.process.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  })

  test('SIGKILL during a pull leaves no partial state; after a restart the sync completes', async (t) => {
    const world = receiptWorld()
    const ops = [...world.genesis(), ...world.receipts(2000)]
    const source = await startLedgerPeer()
    t.after(() => source.stop())
    for (let i = 0; i < ops.length; i += 1000) source.ledger.log.ingestMany(ops.slice(i, i + 1000))
    const dbPath = join(dir, 'killed.db')

    const first = spawnNode(dbPath)
    children.push(first)
    await nextLine(first, (l) => typeof l.addr === 'string')
    first.process.stdin!.write(`${JSON.stringify({ dial: source.mesh.multiaddrs()[0] })}\n`)
    // Killed as soon as the first ops are in: the pull is still streaming and ingesting (4k ops:
    // long enough that a loaded machine cannot finish them between that line and the kill).
    await nextLine(first, (l) => typeof l.total === 'number' && (l.total as number) > 0)
    first.process.kill('SIGKILL')
    await new Promise((resolve) => first.process.once('exit', resolve))

    const killed = inspect(dbPath)
    t.diagnostic(`killed holding ${killed.ops} of ${ops.length} ops`)
    assert.ok(killed.ops > 0 && killed.ops < ops.length, `killed with ${killed.ops} of ${ops.length} ops`)
    assert.deepEqual(killed.audit.problems, [])
    assert.equal(killed.audit.ok, true)
    assert.equal(killed.audit.balancesMatch, true)

    const second = spawnNode(dbPath)
    children.push(second)
    const up = await nextLine(second, (l) => typeof l.addr === 'string')
    assert.equal(up.ops, killed.ops)
    second.process.stdin!.write(`${JSON.stringify({ dial: source.mesh.multiaddrs()[0] })}\n`)
    const target = source.sync.summary().total
    await nextLine(second, (l) => l.total === target, 60_000)
    second.process.stdin!.write(`${JSON.stringify({ stop: true })}\n`)
    await new Promise((resolve) => second.process.once('exit', resolve))

    const done = inspect(dbPath)
    assert.equal(done.ops, ops.length)
    assert.equal(done.audit.ok, true)
    assert.deepEqual(done.heads, headsOf(source.ledger))
    assert.deepEqual(done.balances, balancesOf(source.ledger))
  })
})
