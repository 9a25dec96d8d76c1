// A hostile mesh peer in its own process, for the gossip flood test: joins the peer at argv[2]
// and publishes capacity records as fast as it can — well-signed ones at many times the rate
// any peer allows, then invalid ones (garbage, and records signed in another key) — bounded by
// argv[3] records and argv[4] ms. Prints {id} when joined and {published, ms} when done.

import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { signCapacityRecord } from '../../src/mesh/capacity-record.ts'
import { CAPACITY_TOPIC, createMeshNode } from '../../src/mesh/libp2p-node.ts'
import { MODEL_DIGEST } from './helpers.ts'

const [target = '', countArg = '2000', msArg = '5000'] = process.argv.slice(2)
const count = Math.min(Number(countArg), 100_000)
const durationMs = Math.min(Number(msArg), 30_000)
const identity = generateIdentity()
const other = generateIdentity()
const mesh = await createMeshNode({ identity, logger: silentLogger })
await mesh.start()
const pubsub = mesh.libp2p.services.pubsub
pubsub.subscribe(CAPACITY_TOPIC)
await mesh.dial(target, 10_000)
const deadline = Date.now() + 10_000
while (pubsub.getSubscribers(CAPACITY_TOPIC).length === 0 && Date.now() < deadline)
  await new Promise((r) => setTimeout(r, 20))
process.stdout.write(`${JSON.stringify({ id: identity.id })}\n`)

const snapshot = (i: number) => ({
  models: [{ digest: MODEL_DIGEST, name: 'flood:latest' }],
  loaded: [],
  freeSlots: 1_000,
  tokensPerSecond: 1e6,
  queueDepth: i,
})
const started = Date.now()
let published = 0
for (let i = 0; i < count && Date.now() - started < durationMs; i++) {
  let bytes: Uint8Array
  if (Date.now() - started < durationMs * 0.8) bytes = signCapacityRecord(identity, snapshot(i))
  else if (i % 2 === 0)
    bytes = signCapacityRecord(other, snapshot(i)) // someone else's record
  else bytes = new Uint8Array(200).fill(i % 256) // not a record at all
  await pubsub.publish(CAPACITY_TOPIC, bytes).catch(() => {})
  published++
}
process.stdout.write(`${JSON.stringify({ published, ms: Date.now() - started })}\n`)
await mesh.stop()
process.exit(0)
