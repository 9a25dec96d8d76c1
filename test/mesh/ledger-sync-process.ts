// A ledger node in its own process, for tests and benchmarks that kill it or run many:
// a real libp2p host, a ledger in an SQLite file and ledger sync. Prints one JSON line
// `{id, addr, ops}` when up, then `{digest, total, at}` after its ledger changed; reads
// commands from stdin, one JSON line each:
//   {dial: multiaddr} · {block: peerId} (hang up, and refuse it until unblocked: a
//   partition) · {unblock: true} · {append: n} (n genesis ops of its own) · {summary: true}
//   · {stop: true}
//
//   node test/mesh/ledger-sync-process.ts <db path> [sync init as JSON]

import { createInterface } from 'node:readline'
import { peerIdFromString } from '@libp2p/peer-id'
import { generateIdentity } from '../../src/identity/keys.ts'
import { createLedger } from '../../src/ledger/ledger.ts'
import { silentLogger } from '../../src/logger.ts'
import { createLedgerSync } from '../../src/mesh/ledger-sync.ts'
import { createMeshNode } from '../../src/mesh/libp2p-node.ts'
import { openDatabase } from '../../src/store/database.ts'
import { countLedgerOps } from '../../src/store/ledger-table.ts'

const [dbPath, initJson] = process.argv.slice(2)
if (dbPath === undefined) throw new Error('usage: ledger-sync-process.ts <db path> [init]')
const identity = generateIdentity()
const db = openDatabase(dbPath)
const ledger = createLedger({ db })
ledger.start()
const mesh = await createMeshNode({ identity, logger: silentLogger }, { dialOnDiscovery: false })
const sync = createLedgerSync(
  { mesh, ledger, logger: silentLogger },
  initJson === undefined ? {} : JSON.parse(initJson),
)
const say = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`)
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex')

// After every change (once the batch that made it is committed): what this node now holds.
let pending = false
ledger.onChange(() => {
  if (pending) return
  pending = true
  setTimeout(() => {
    pending = false
    const s = sync.summary()
    say({ digest: hex(s.digest), total: s.total, at: Date.now() })
  }, 1)
})
await mesh.start()
await sync.start()
say({ id: identity.id, addr: mesh.multiaddrs()[0], ops: countLedgerOps(db) })

const failures: Record<string, number> = {}
sync.onSync((_result, error) => {
  if (error !== undefined) failures[error.code] = (failures[error.code] ?? 0) + 1
})

// A partition: the DHT and the peer store would otherwise redial a peer we hung up on.
const blocked = new Set<string>()
mesh.libp2p.addEventListener('peer:connect', (evt) => {
  if (blocked.has(evt.detail.toString())) void mesh.libp2p.hangUp(evt.detail)
})

const stop = async () => {
  await sync.stop()
  await mesh.stop()
  ledger.stop()
  db.close()
  process.exit(0)
}
for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line) as {
    dial?: string
    block?: string
    unblock?: boolean
    append?: number
    summary?: boolean
    stop?: boolean
  }
  if (cmd.dial !== undefined) {
    // A loaded machine makes dials time out now and then: a few tries.
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        await mesh.dial(cmd.dial, 20_000)
        break
      } catch (err) {
        if (attempt === 3) say({ error: String(err) })
      }
    }
  }
  if (cmd.block !== undefined) {
    blocked.add(cmd.block)
    await mesh.libp2p.hangUp(peerIdFromString(cmd.block))
  }
  if (cmd.unblock === true) blocked.clear()
  if (cmd.append !== undefined) {
    for (let i = 0; i < cmd.append; i++) ledger.append(identity, { kind: 'member-genesis', body: {} })
  }
  if (cmd.summary === true) {
    const s = sync.summary()
    say({
      summary: hex(s.digest),
      held: s.total,
      stats: sync.stats(),
      failures,
      connections: mesh.libp2p.getConnections().length,
      balances: ledger.balances(),
    })
  }
  if (cmd.stop === true) await stop()
}
await stop()
