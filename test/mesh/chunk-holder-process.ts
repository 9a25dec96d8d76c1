// A model holder in its own process, for peer-transfer tests and benchmarks: serves one file
// over `/substrate/model-chunks/1`, honestly or as the hostile peer the test asks for. Prints
// `{id, addr, digest}` as one JSON line, then serves until killed or stdin closes.
//
//   argv[2]: JSON {file, mode?: 'honest' | 'corrupt' | 'stall' | 'lie', lieAbout?: digest,
//                  bytesPerSecond?: number, chunkSize?: number,
//                  bootstrap?: multiaddr (joins that mesh and provides the file's digest in its DHT)}

import { generateIdentity } from '../../src/identity/keys.ts'
import { silentLogger } from '../../src/logger.ts'
import { createMeshNode } from '../../src/mesh/libp2p-node.ts'
import { createModelProviders } from '../../src/mesh/model-providers.ts'
import { createModelTransfer } from '../../src/mesh/model-transfer.ts'
import { fileChunkSource, type HolderMode } from './chunk-source.ts'

const config = JSON.parse(process.argv[2] ?? '{}') as {
  file: string
  mode?: HolderMode
  lieAbout?: string
  bytesPerSecond?: number
  chunkSize?: number
  bootstrap?: string
}
const identity = generateIdentity()
const mesh = await createMeshNode({ identity, logger: silentLogger })
const source = await fileChunkSource(config.file, config)
const transfer = createModelTransfer(
  { mesh, logger: silentLogger, source },
  config.bytesPerSecond === undefined ? {} : { uploadBytesPerSecond: config.bytesPerSecond },
)
await mesh.start()
await transfer.start()
if (config.bootstrap !== undefined) {
  await mesh.dial(config.bootstrap, 10_000)
  await createModelProviders({ mesh, logger: silentLogger }).provide(source.digest)
}
process.stdout.write(
  `${JSON.stringify({ id: identity.id, addr: mesh.multiaddrs()[0], digest: source.digest })}\n`,
)
process.stdin.resume()
process.stdin.on('end', () => {
  void transfer
    .stop()
    .then(() => mesh.stop())
    .then(() => process.exit(0))
})
