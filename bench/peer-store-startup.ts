// What the on-disk peer store costs a node's start: createMeshNode + start() with libp2p's
// in-memory datastore, against the SQLite datastore (src/store/datastore.ts) empty and
// holding N remembered peers, side by side in one run, interleaved. The remembered peers
// are real peer-store entries (written through libp2p's own peer store: key, addresses,
// protocols), each with an address nobody listens on; the reconnect dials they cause run
// after start() returns and are not timed here (they are bounded by 10 s and 8 peers).
//
//   node bench/peer-store-startup.ts [peers=1000] [rounds=7]

import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { generateIdentity } from '../src/identity/keys.ts'
import { silentLogger } from '../src/logger.ts'
import { createMeshNode, type MeshNodeInit } from '../src/mesh/libp2p-node.ts'
import { machineInfo } from './machine.ts'

const PEERS = Number(process.argv[2] ?? 1000)
const ROUNDS = Number(process.argv[3] ?? 7)
const dir = mkdtempSync(join(tmpdir(), 'substrate-bench-peerstore-'))
const load = loadavg()[0]

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

async function timedStart(init: MeshNodeInit): Promise<{ createMs: number; startMs: number; known: number }> {
  const t0 = performance.now()
  const node = await createMeshNode(
    { identity: generateIdentity(), logger: silentLogger },
    { ...init, reconnectPeers: 0, randomWalkMinConnections: 0 },
  )
  const t1 = performance.now()
  await node.start()
  const t2 = performance.now()
  const known = (await node.libp2p.peerStore.all()).length
  await node.stop()
  return { createMs: t1 - t0, startMs: t2 - t1, known }
}

// Fill a datastore with PEERS peers through libp2p's own peer store.
const fullPath = join(dir, 'full.db')
{
  const node = await createMeshNode(
    { identity: generateIdentity(), logger: silentLogger },
    { datastorePath: fullPath, reconnectPeers: 0 },
  )
  await node.start()
  for (let i = 0; i < PEERS; i++) {
    await node.libp2p.peerStore.merge(peerIdFromString(generateIdentity().id), {
      multiaddrs: [multiaddr(`/ip4/10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}/tcp/4435`)],
      protocols: ['/substrate/kad/1.0.0', '/substrate/job/1', '/meshsub/1.1.0'],
    })
  }
  await node.stop()
}

const kinds = {
  memory: () => ({}),
  'sqlite, empty': () => ({ datastorePath: join(dir, `empty-${Math.random()}.db`) }),
  [`sqlite, ${PEERS} peers`]: () => ({ datastorePath: fullPath }),
} satisfies Record<string, () => MeshNodeInit>
const results: Record<string, { create: number[]; start: number[]; known: number }> = {}
await timedStart({}) // warm the module graph and JIT once, untimed
for (let r = 0; r < ROUNDS; r++) {
  for (const [name, init] of Object.entries(kinds)) {
    const m = await timedStart(init())
    const entry = results[name] ?? { create: [], start: [], known: 0 }
    entry.create.push(m.createMs)
    entry.start.push(m.startMs)
    entry.known = m.known
    results[name] = entry
  }
}

const base = median(results.memory!.create) + median(results.memory!.start)
console.log(
  JSON.stringify({
    machine: machineInfo(),
    loadBefore: load,
    loadAfter: loadavg()[0],
    peers: PEERS,
    rounds: ROUNDS,
  }),
)
console.log(`datastore file with ${PEERS} peers: ${(statSync(fullPath).size / 1024).toFixed(0)} KiB`)
console.log(
  '| datastore | create ms (median) | start ms (median) | total vs memory | peers known after start |',
)
console.log('| --- | --- | --- | --- | --- |')
for (const [name, r] of Object.entries(results)) {
  const total = median(r.create) + median(r.start)
  console.log(
    `| ${name} | ${median(r.create).toFixed(1)} | ${median(r.start).toFixed(1)} | ${(total / base).toFixed(2)}× | ${r.known} |`,
  )
}
rmSync(dir, { recursive: true, force: true })
