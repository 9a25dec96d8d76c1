// A mesh worker in its own process, for tests that kill it: prints its multiaddr as one JSON
// line, then serves jobs from an endless fake runtime until killed or stdin closes.

import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createJobProtocol } from '../../src/mesh/job-protocol.ts'
import { createMeshNode } from '../../src/mesh/libp2p-node.ts'
import { fakeRunJob, MODEL_DIGEST } from './helpers.ts'

const identity = generateIdentity()
const mesh = await createMeshNode({ identity, logger: silentLogger })
const jobs = createJobProtocol({
  mesh,
  identity,
  logger: silentLogger,
  hasModel: (digest) => digest === MODEL_DIGEST,
  runJob: fakeRunJob({ started: 0, stopped: 0 }, { forever: true, delayMs: 5 }),
})
await mesh.start()
await jobs.start()
process.stdout.write(`${JSON.stringify({ id: identity.id, addr: mesh.multiaddrs()[0] })}\n`)
process.stdin.resume()
process.stdin.on('end', () => {
  void jobs
    .stop()
    .then(() => mesh.stop())
    .then(() => process.exit(0))
})
