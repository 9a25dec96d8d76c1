// A peer puller in its own process, so the peer-transfer benchmark can SIGKILL it mid-pull:
// pulls `digest` from the given holders into `tmpDir`, printing each progress event and
// each chunk it verified and wrote (`{chunk, peer}`), then its stats as JSON lines.
// (stdout to a pipe is synchronous on Linux: a line printed before a SIGKILL arrives.)
//
//   node bench/peer-pull-process.ts '{"digest": "...", "tmpDir": "...", "holders": [{"id", "addr"}]}'

import { generateIdentity } from '../src/identity/keys.ts'
import { silentLogger } from '../src/logger.ts'
import { createMeshNode } from '../src/mesh/libp2p-node.ts'
import { createModelTransfer } from '../src/mesh/model-transfer.ts'
import { createPeerPuller } from '../src/mesh/peer-pull.ts'

const config = JSON.parse(process.argv[2] ?? '{}') as {
  digest: string
  tmpDir: string
  holders: Array<{ id: string; addr: string }>
}
const mesh = await createMeshNode({ identity: generateIdentity(), logger: silentLogger })
await mesh.start()
for (const h of config.holders) await mesh.dial(h.addr, 10_000)
const transfer = createModelTransfer({
  mesh,
  logger: silentLogger,
  source: { manifest: async () => undefined, readChunk: () => Promise.reject(new Error('holds nothing')) },
})
const puller = createPeerPuller(
  { transfer, findHolders: async () => config.holders.map((h) => h.id), logger: silentLogger },
  { onChunk: (chunk, peer) => process.stdout.write(`${JSON.stringify({ chunk, peer })}\n`) },
)
const fetched = await puller.fetch(config.digest, {
  tmpDir: config.tmpDir,
  onProgress: (e) => process.stdout.write(`${JSON.stringify(e)}\n`),
})
await fetched.settle()
process.stdout.write(`${JSON.stringify({ done: true, path: fetched.path, stats: puller.lastStats() })}\n`)
await mesh.stop()
process.exit(0)
